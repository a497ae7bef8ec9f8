package nbdserver

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// feed serves one connection over net.Pipe with serve, writes in as the
// client, hangs up, and returns what serve returned. It fails the test if
// serve does not return.
func feed(t testing.TB, serve func(context.Context, net.Conn) error, in []byte) error {
	t.Helper()
	server, client := net.Pipe()
	return feedConn(t, serve, server, client, in)
}

// feedConn is feed over a given connection pair. A client that can
// half-close (a unix socket) reads the server's replies until the server
// hangs up; net.Pipe cannot, so the server may see its replies fail.
func feedConn(t testing.TB, serve func(context.Context, net.Conn) error, server, client net.Conn, in []byte) error {
	t.Helper()
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- serve(ctx, server) }()
	drained := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, client)
		close(drained)
	}()
	_ = client.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = client.Write(in)
	if hc, ok := client.(interface{ CloseWrite() error }); ok {
		_ = hc.CloseWrite()
	} else {
		client.Close()
	}
	select {
	case err := <-done:
		<-drained
		return err
	case <-time.After(8 * time.Second):
		t.Fatalf("server did not return on input %x", in[:min(len(in), 64)])
		return nil
	}
}

// waitBudgetFree fails the test unless all of s's buffer budget comes back.
func waitBudgetFree(t testing.TB, s *Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !s.budget.TryAcquire(s.opts.bufferBudget) {
		if time.Now().After(deadline) {
			t.Fatal("buffer budget not released")
		}
		time.Sleep(time.Millisecond)
	}
	s.budget.Release(s.opts.bufferBudget)
}

func fuzzServer(t testing.TB) *Server {
	data := randomBytes(10, 1<<20)
	s, err := New([]Export{
		{Name: "img", Description: "fuzz", Backend: memBackend(data)},
		{Name: "flaky", Backend: failingBackend{Backend: memBackend(data), badOff: 4096, badLen: 4096}},
	}, withHandshakeTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func withHandshakeTimeout(d time.Duration) Option { return func(o *options) { o.handshakeTimeout = d } }

func clientFlagsBytes(f uint32) []byte { return binary.BigEndian.AppendUint32(nil, f) }

func concat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// FuzzHandshake feeds bytes to the server as a client's side of the
// handshake (client flags, then options, then perhaps requests).
func FuzzHandshake(f *testing.F) {
	fl := clientFlagsBytes(clientFlagFixedNewstyle | clientFlagNoZeroes)
	read := requestBytes(cmdRead, 1, 0, 4096)
	disc := requestBytes(cmdDisc, 2, 0, 0)
	f.Add(concat(fl, optionBytes(protocol.NEGOTIATION_ID_OPTION_GO, infoData("img", 3)), read, disc))
	f.Add(concat(fl, optionBytes(protocol.NEGOTIATION_ID_OPTION_INFO, infoData("", 0, 1, 2, 3)),
		optionBytes(protocol.NEGOTIATION_ID_OPTION_GO, infoData("flaky")), requestBytes(cmdRead, 1, 4096, 512)))
	f.Add(concat(clientFlagsBytes(clientFlagFixedNewstyle), optionBytes(optExportName, []byte("img")), read))
	f.Add(concat(fl, optionBytes(optExportName, []byte("nope"))))
	f.Add(concat(fl, optionBytes(protocol.NEGOTIATION_ID_OPTION_LIST, nil), optionBytes(protocol.NEGOTIATION_ID_OPTION_ABORT, nil)))
	f.Add(concat(fl, optionBytes(8, nil), optionBytes(99, []byte("x")), optionBytes(protocol.NEGOTIATION_ID_OPTION_GO, infoData("nope"))))
	f.Add(concat(fl, optionBytes(protocol.NEGOTIATION_ID_OPTION_GO, []byte{0xff, 0xff, 0xff, 0xff, 0, 0})))
	huge := optionBytes(protocol.NEGOTIATION_ID_OPTION_GO, nil)
	binary.BigEndian.PutUint32(huge[12:], 0xffffffff)
	f.Add(concat(fl, huge, make([]byte, 100)))
	f.Add(concat(clientFlagsBytes(0xffffffff)))
	f.Add([]byte("NBDMAGICIHAVEOPT garbage"))
	f.Add([]byte{})

	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		_ = feed(t, s.ServeConn, in)
		waitBudgetFree(t, s)
	})
}

// FuzzRequests feeds bytes to the server as transmission-phase requests,
// as on a socket handed over by the kernel.
func FuzzRequests(f *testing.F) {
	write := requestBytes(cmdWrite, 3, 0, 512)
	f.Add(concat(requestBytes(cmdRead, 1, 0, 4096), requestBytes(cmdRead, 2, 1<<20-512, 512), requestBytes(cmdDisc, 9, 0, 0)))
	f.Add(concat(write, make([]byte, 512), requestBytes(cmdFlush, 4, 0, 0), requestBytes(cmdTrim, 5, 0, 4096)))
	f.Add(concat(requestBytes(cmdRead, 1, 1<<20, 4096), requestBytes(cmdRead, 2, 0, 0), requestBytes(0xffff, 3, 0, 0)))
	f.Add(concat(requestBytes(cmdRead, 1, 1<<64-1, 4096), requestBytes(cmdRead, 2, 0, 0xffffffff)))
	f.Add(concat(requestBytes(cmdWrite, 1, 0, 0xffffffff), make([]byte, 1000)))
	f.Add(requestBytes(cmdRead, 1, 0, 4096)[:20])
	bad := requestBytes(cmdRead, 1, 0, 4096)
	bad[3] = 0
	f.Add(bad)

	s := fuzzServer(f)
	serve := func(ctx context.Context, c net.Conn) error { return s.ServeTransmission(ctx, c, "img") }
	f.Fuzz(func(t *testing.T, in []byte) {
		_ = feed(t, serve, in)
		waitBudgetFree(t, s)
	})
}
