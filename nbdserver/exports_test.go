package nbdserver

import (
	"context"
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// goExport runs the handshake with NBD_OPT_GO and returns the final reply type.
func (c *rawClient) goExport(name string) uint32 {
	c.t.Helper()
	c.option(protocol.NEGOTIATION_ID_OPTION_GO, infoData(name))
	_, final := c.infoReplies(protocol.NEGOTIATION_ID_OPTION_GO)
	return final.typ
}

func TestAddAndRemoveExports(t *testing.T) {
	s := newServer(t, nil)
	sock, _ := serveUnix(t, s)

	// No exports yet: nothing answers, not even the empty name.
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle)
	if typ := c.goExport(""); typ != protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN {
		t.Fatalf("default export of an empty server: reply %#x", typ)
	}

	a, b := randomBytes(1, 64<<10), randomBytes(2, 64<<10)
	if err := s.Add(Export{Name: "a", Backend: memBackend(a)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(Export{Name: "b", Backend: memBackend(b)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(Export{Name: "a", Backend: memBackend(b)}); err == nil {
		t.Error("a duplicate name was added")
	}
	if err := s.Add(Export{Name: "nil"}); err == nil {
		t.Error("an export without a backend was added")
	}
	// The same connection, still haggling, now finds the export.
	if typ := c.goExport("b"); typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		t.Fatalf("NBD_OPT_GO b: %#x", typ)
	}
	c.readsFirstBlock(b)

	// The first export added is the default one.
	d := dialRaw(t, sock)
	d.greet(clientFlagFixedNewstyle)
	if typ := d.goExport(""); typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		t.Fatalf("default export: %#x", typ)
	}
	d.readsFirstBlock(a)

	// Removing b closes the live connection on it, and only that one.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Remove(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(c.r); err != nil {
		t.Fatalf("connection on the removed export: %v", err)
	}
	d.readsFirstBlock(a)

	// New handshakes no longer find it; the list shows what is left.
	e := dialRaw(t, sock)
	e.greet(clientFlagFixedNewstyle)
	if typ := e.goExport("b"); typ != protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN {
		t.Errorf("NBD_OPT_GO for a removed export: %#x", typ)
	}
	if got := s.Exports(); len(got) != 1 || got[0].Name != "a" {
		t.Errorf("Exports() = %v, want only a", got)
	}
	if err := s.Remove(ctx, "b"); !errors.Is(err, ErrUnknownExport) {
		t.Errorf("removing it again: %v, want ErrUnknownExport", err)
	}

	// The name can be served again, by a new backend.
	if err := s.Add(Export{Name: "b", Backend: memBackend(a)}); err != nil {
		t.Fatal(err)
	}
	if typ := e.goExport("b"); typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		t.Fatalf("NBD_OPT_GO b again: %#x", typ)
	}
	e.readsFirstBlock(a)
}

func TestRemoveEndsKernelSockets(t *testing.T) {
	data := randomBytes(5, 64<<10)
	s := newServer(t, []Export{{Name: "img", Backend: memBackend(data)}})
	server, client := socketPair(t)
	done := make(chan error, 1)
	go func() { done <- s.ServeTransmission(context.Background(), server, "img") }()
	c := newRawClient(t, client)
	c.readsFirstBlock(data)
	if err := s.Remove(context.Background(), "img"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("ServeTransmission still runs after its export was removed")
	}
	other, _ := socketPair(t)
	if err := s.ServeTransmission(context.Background(), other, "img"); !errors.Is(err, ErrUnknownExport) {
		t.Errorf("ServeTransmission of a removed export: %v, want ErrUnknownExport", err)
	}
}

func TestRemoveIsNotHeldByAStuckRead(t *testing.T) {
	data := randomBytes(6, 64<<10)
	gate := make(chan struct{})
	defer close(gate)
	s := newServer(t, []Export{{Name: "img", Backend: gatedBackend{Backend: memBackend(data), gates: map[int64]chan struct{}{4096: gate}}}})
	sock, _ := serveUnix(t, s)
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle)
	if typ := c.goExport("img"); typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		t.Fatalf("NBD_OPT_GO: %#x", typ)
	}
	c.request(protocol.TRANSMISSION_TYPE_REQUEST_READ, 1, 4096, 4096)
	// The read is stuck in the backend (a registry that does not answer):
	// the connection still ends, so that the export's owner can close the
	// backend, which fails the read.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Remove(ctx, "img"); err != nil {
		t.Fatalf("Remove with a read stuck in the backend: %v", err)
	}
	// Closed, with or without a reset (the socket may hold unread bytes);
	// no reply comes.
	if b, err := io.ReadAll(c.r); len(b) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
		t.Errorf("after Remove: read %d bytes, %v; want the connection closed", len(b), err)
	}
}
