package nbdserver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestNewRejects(t *testing.T) {
	b := memBackend(make([]byte, 4096))
	cases := map[string]struct {
		exports []Export
		opts    []Option
	}{
		"no backend":       {[]Export{{Name: "a"}}, nil},
		"duplicate names":  {[]Export{{Name: "a", Backend: b}, {Name: "a", Backend: b}}, nil},
		"long name":        {[]Export{{Name: strings.Repeat("n", 4097), Backend: b}}, nil},
		"long description": {[]Export{{Name: "a", Description: strings.Repeat("d", 4097), Backend: b}}, nil},
		"negative size":    {[]Export{{Name: "a", Backend: negativeSize{}}}, nil},
		"no slots":         {[]Export{{Backend: b}}, []Option{WithMaxInFlight(0)}},
		"tiny budget":      {[]Export{{Backend: b}}, []Option{WithBufferBudget(1 << 20)}},
		"negative timeout": {[]Export{{Backend: b}}, []Option{WithReadTimeout(-time.Second)}},
	}
	for name, tc := range cases {
		if _, err := New(tc.exports, tc.opts...); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	if _, err := New([]Export{{Backend: b}}, WithMaxInFlight(1), WithBufferBudget(MaximumPayload), WithReadTimeout(time.Second)); err != nil {
		t.Errorf("New with valid options: %v", err)
	}
}

type negativeSize struct{ memBackend }

func (negativeSize) Size() int64 { return -1 }

func TestServeTransmissionSocketPair(t *testing.T) {
	data := randomBytes(12, 1<<20)
	s := newServer(t, []Export{{Name: "first", Backend: memBackend(nil)}, {Name: "img", Backend: memBackend(data)}})
	server, client := socketPair(t)
	done := make(chan error, 1)
	go func() { done <- s.ServeTransmission(context.Background(), server, "img") }()

	c := newRawClient(t, client)
	c.request(cmdRead, 1, 4096, 8192)
	if r := c.expectReply(1, 0, map[uint64]int{1: 8192}); !bytes.Equal(r.data, data[4096:12288]) {
		t.Fatal("wrong bytes")
	}
	c.request(cmdDisc, 2, 0, 0)
	c.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("ServeTransmission after NBD_CMD_DISC: %v", err)
	}

	server, _ = socketPair(t)
	if err := s.ServeTransmission(context.Background(), server, "nope"); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("ServeTransmission of an unknown export: %v", err)
	}
}

func TestExportSize(t *testing.T) {
	s := newServer(t, []Export{{Name: "first", Backend: memBackend(make([]byte, 8192))}, {Name: "img", Backend: memBackend(make([]byte, 1<<20))}})
	for name, want := range map[string]int64{"": 8192, "first": 8192, "img": 1 << 20} {
		if got, err := s.ExportSize(name); err != nil || got != want {
			t.Errorf("ExportSize(%q) = %d, %v; want %d", name, got, err, want)
		}
	}
	if _, err := s.ExportSize("nope"); !errors.Is(err, ErrUnknownExport) {
		t.Errorf("ExportSize of an unknown export: %v, want ErrUnknownExport", err)
	}
}

func TestServeTransmissionStopsWithContext(t *testing.T) {
	gate := make(chan struct{})
	t.Cleanup(func() { close(gate) })
	s := newServer(t, []Export{{Backend: gatedBackend{Backend: memBackend(make([]byte, 8192)), gates: map[int64]chan struct{}{0: gate}}}})
	server, client := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeTransmission(ctx, server, "") }()
	c := newRawClient(t, client)
	c.request(cmdRead, 1, 0, 4096) // stuck in the backend
	c.request(cmdFlush, 2, 0, 0)
	c.expectReply(2, 0, nil)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("ServeTransmission returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeTransmission did not stop with its context")
	}
	// The stuck read stays unanswered: the kernel resends it elsewhere.
	c.expectClosed()
}

func TestServeStopsWithContext(t *testing.T) {
	s := newServer(t, []Export{{Name: "img", Backend: memBackend(make([]byte, 8192))}})
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	c := dialRaw(t, sock)
	c.handshake("img") // a connection in transmission
	idle := dialRaw(t, sock)
	idle.greet(clientFlagFixedNewstyle) // and one haggling
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve returned %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not stop with its context")
	}
	// Closed with or without unread bytes (a reset) is fine.
	for _, rc := range []*rawClient{c, idle} {
		if b, err := io.ReadAll(rc.r); len(b) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("connection not closed: %d bytes, %v", len(b), err)
		}
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Error("listener still accepts after Serve returned")
	}
}

func TestLoggerFromContext(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	log := zerolog.New(zerolog.SyncWriter(&lockedWriter{mu: &mu, w: &buf}))
	s, err := New([]Export{{Name: "img", Backend: failingBackend{Backend: memBackend(make([]byte, 8192)), badOff: 0, badLen: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	server, client := socketPair(t)
	done := make(chan error, 1)
	go func() { done <- s.ServeTransmission(log.WithContext(context.Background()), server, "img") }()
	c := newRawClient(t, client)
	c.request(cmdRead, 1, 0, 4096)
	c.expectReply(1, errEIO, nil)
	c.request(cmdDisc, 2, 0, 0)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "nbd read failed") || !strings.Contains(buf.String(), `"export":"img"`) {
		t.Errorf("context logger got %q", buf.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
