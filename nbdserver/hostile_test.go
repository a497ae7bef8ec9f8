package nbdserver

import (
	"encoding/binary"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// allocatedDuring reports the bytes the process allocated while f ran.
func allocatedDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// sendZeros writes n zero bytes from one reused chunk.
func (c *rawClient) sendZeros(n int) {
	c.t.Helper()
	chunk := make([]byte, 256<<10)
	for n > 0 {
		k := min(n, len(chunk))
		c.write(chunk[:k])
		n -= k
	}
}

func TestHostileHugeOptionIsSkipped(t *testing.T) {
	sock, data := handshakeServer(t)
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle)
	const n = 48 << 20
	allocated := allocatedDuring(func() {
		hdr := optionBytes(protocol.NEGOTIATION_ID_OPTION_GO, nil)
		binary.BigEndian.PutUint32(hdr[12:], n)
		c.write(hdr)
		c.sendZeros(n)
		if r := c.optionReply(); r.typ != repErrTooBig {
			t.Fatalf("option of %d bytes: reply %#x, want NBD_REP_ERR_TOO_BIG", n, r.typ)
		}
	})
	if allocated > 8<<20 {
		t.Errorf("skipping a %d-byte option allocated %d bytes", n, allocated)
	}
	// The stream is still in step.
	c.option(protocol.NEGOTIATION_ID_OPTION_GO, infoData("img"))
	if _, final := c.infoReplies(protocol.NEGOTIATION_ID_OPTION_GO); final.typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		t.Fatalf("NBD_OPT_GO after a huge option: %#x", final.typ)
	}
	c.readsFirstBlock(data)
}

func TestHostileHugeOptionThenHangUp(t *testing.T) {
	s := fuzzServer(t)
	hdr := optionBytes(protocol.NEGOTIATION_ID_OPTION_INFO, nil)
	binary.BigEndian.PutUint32(hdr[12:], 0xffffffff)
	err := feed(t, s.ServeConn, concat(clientFlagsBytes(clientFlagFixedNewstyle), hdr, make([]byte, 1000)))
	if err == nil {
		t.Fatal("ServeConn returned nil for a connection cut inside an option")
	}
}

func TestHostileWritePayloadIsSkipped(t *testing.T) {
	data := randomBytes(11, 1<<20)
	c := transmissionClient(t, memBackend(data))
	const n = 64 << 20
	allocated := allocatedDuring(func() {
		c.request(cmdWrite, 1, 0, n)
		c.sendZeros(n)
		c.expectReply(1, eperm, nil)
	})
	if allocated > 8<<20 {
		t.Errorf("skipping a %d-byte write payload allocated %d bytes", n, allocated)
	}
	c.readsFirstBlock(data)
}

func TestHostileBudgetBoundsBuffers(t *testing.T) {
	const (
		readLen = 4 << 20
		perConn = 8
		conns   = 4
		budget  = MaximumPayload // 8 reads' worth, for 32 sent at once
	)
	b := &countingBackend{Backend: memBackend(make([]byte, 32<<20)), delay: 5 * time.Millisecond}
	s := newServer(t, []Export{{Name: "img", Backend: b}}, WithBufferBudget(budget))
	sock, _ := serveUnix(t, s)
	var wg sync.WaitGroup
	for range conns {
		c := dialRaw(t, sock)
		c.handshake("img")
		wg.Add(1)
		go func() {
			defer wg.Done()
			lens := map[uint64]int{}
			for i := range perConn {
				lens[uint64(i)] = readLen
				c.request(cmdRead, uint64(i), uint64(i)*readLen, readLen)
			}
			for range perConn {
				if r := c.reply(lens); r.errno != 0 {
					t.Errorf("read %d: errno %d", r.cookie, r.errno)
				}
			}
		}()
	}
	wg.Wait()
	if m := b.maxSeen.Load(); m > budget || m < readLen {
		t.Errorf("at most %d bytes were being read at once, want between %d and the budget %d", m, readLen, budget)
	}
	waitBudgetFree(t, s)
}

func TestHostileClientThatStopsReading(t *testing.T) {
	b := memBackend(make([]byte, 32<<20))
	s := newServer(t, []Export{{Name: "img", Backend: b}},
		WithBufferBudget(MaximumPayload), WithWriteTimeout(500*time.Millisecond))
	sock, _ := serveUnix(t, s)
	c := dialRaw(t, sock)
	c.handshake("img")
	// Replies far beyond what the socket buffers; never read.
	for i := range 16 {
		c.request(cmdRead, uint64(i), uint64(i)*(2<<20), 2<<20)
	}
	// The server gives up on the connection and so frees the budget that
	// another client needs.
	waitBudgetFree(t, s)
	other := dialRaw(t, sock)
	other.handshake("img")
	other.request(cmdRead, 1, 0, 4<<20)
	other.expectReply(1, 0, map[uint64]int{1: 4 << 20})
}

func TestHostileStreams(t *testing.T) {
	s := fuzzServer(t)
	fl := clientFlagsBytes(clientFlagFixedNewstyle)
	goImg := optionBytes(protocol.NEGOTIATION_ID_OPTION_GO, infoData("img"))
	cases := []struct {
		name    string
		in      []byte
		wantErr error // nil: any outcome but a hang or panic
		clean   bool  // serve must return nil
	}{
		{name: "nothing", in: nil},
		{name: "half the client flags", in: fl[:2]},
		{name: "unknown client flags", in: clientFlagsBytes(4), wantErr: ErrClientFlags},
		{name: "garbage option magic", in: concat(fl, []byte("NBDMAGICxxxxxxxxxxxxxxxx")), wantErr: ErrBadMagic},
		{name: "truncated option header", in: concat(fl, goImg[:10])},
		{name: "truncated option data", in: concat(fl, goImg[:len(goImg)-3])},
		{name: "abort", in: concat(fl, optionBytes(protocol.NEGOTIATION_ID_OPTION_ABORT, nil)), clean: true},
		{name: "hang up between options", in: concat(fl, optionBytes(protocol.NEGOTIATION_ID_OPTION_LIST, nil)), clean: true},
		{name: "garbage request magic", in: concat(fl, goImg, []byte("0123456789abcdef0123456789ab")), wantErr: ErrBadMagic},
		{name: "truncated request header", in: concat(fl, goImg, requestBytes(cmdRead, 1, 0, 512)[:27])},
		{name: "disconnect", in: concat(fl, goImg, requestBytes(cmdRead, 1, 0, 512), requestBytes(cmdDisc, 2, 0, 0)), clean: true},
		{name: "hang up between requests", in: concat(fl, goImg, requestBytes(cmdRead, 1, 0, 512)), clean: true},
	}
	for _, tc := range cases {
		server, client := socketPair(t)
		err := feedConn(t, s.ServeConn, server, client, tc.in)
		switch {
		case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
			t.Errorf("%s: ServeConn returned %v, want %v", tc.name, err, tc.wantErr)
		case tc.clean && err != nil:
			t.Errorf("%s: ServeConn returned %v, want nil", tc.name, err)
		}
	}
	waitBudgetFree(t, s)
}
