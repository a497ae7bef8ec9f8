package nbdserver

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

const (
	cmdRead  = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc  = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	eperm    = protocol.TRANSMISSION_ERROR_EPERM
	einval   = protocol.TRANSMISSION_ERROR_EINVAL
)

// transmissionClient serves one export over a unix socket and returns a raw
// client already in transmission on it.
func transmissionClient(t *testing.T, b Backend, opts ...Option) *rawClient {
	t.Helper()
	sock, _ := serveUnix(t, newServer(t, []Export{{Name: "img", Backend: b}}, opts...))
	c := dialRaw(t, sock)
	if size, _ := c.handshake("img"); size != uint64(b.Size()) {
		t.Fatalf("export size %d, want %d", size, b.Size())
	}
	return c
}

func TestRepliesOutOfOrder(t *testing.T) {
	data := randomBytes(4, 64<<10)
	gate := make(chan struct{})
	c := transmissionClient(t, gatedBackend{Backend: memBackend(data), gates: map[int64]chan struct{}{0: gate}})
	lens := map[uint64]int{1: 4096, 2: 8192}
	c.request(cmdRead, 1, 0, 4096)    // slow: waits for the gate
	c.request(cmdRead, 2, 8192, 8192) // fast
	r := c.expectReply(2, 0, lens)
	if !bytes.Equal(r.data, data[8192:16384]) {
		t.Fatal("fast read: wrong bytes")
	}
	close(gate)
	r = c.expectReply(1, 0, lens)
	if !bytes.Equal(r.data, data[:4096]) {
		t.Fatal("slow read: wrong bytes")
	}
}

func TestRequestErrors(t *testing.T) {
	const size = 1 << 20
	data := randomBytes(5, size)
	c := transmissionClient(t, memBackend(data))
	cases := []struct {
		name        string
		typ         uint16
		off         uint64
		length      uint32
		payload     int
		errno       uint32
		readsLength int
	}{
		{"read past end", cmdRead, size - 512, 1024, 0, einval, 0},
		{"read starting past end", cmdRead, size + 4096, 512, 0, einval, 0},
		{"read offset overflows", cmdRead, 1<<64 - 512, 1024, 0, einval, 0},
		{"read offset beyond int64", cmdRead, 1 << 63, 512, 0, einval, 0},
		{"zero-length read", cmdRead, 0, 0, 0, einval, 0},
		{"read over maximum payload", cmdRead, 0, MaximumPayload + 1, 0, einval, 0},
		{"read of 4 GiB", cmdRead, 0, 0xffffffff, 0, einval, 0},
		{"write", cmdWrite, 0, 4096, 4096, eperm, 0},
		{"write past end", cmdWrite, size, 512, 512, eperm, 0},
		{"zero-length write", cmdWrite, 0, 0, 0, eperm, 0},
		{"trim", cmdTrim, 0, 4096, 0, eperm, 0},
		{"write zeroes", cmdWriteZeroes, 0, 1 << 30, 0, eperm, 0},
		{"flush", cmdFlush, 0, 0, 0, 0, 0},
		{"cache (not advertised)", 5, 0, 4096, 0, einval, 0},
		{"block status (not negotiated)", 7, 0, 4096, 0, einval, 0},
		{"unknown command", 0xffff, 0, 4096, 0, einval, 0},
		{"last block", cmdRead, size - 4096, 4096, 0, 0, 4096},
		{"whole export", cmdRead, 0, size, 0, 0, size},
	}
	for i, tc := range cases {
		cookie := uint64(100 + i)
		c.request(tc.typ, cookie, tc.off, tc.length)
		if tc.payload > 0 {
			c.write(make([]byte, tc.payload))
		}
		r := c.reply(map[uint64]int{cookie: tc.readsLength})
		if r.cookie != cookie || r.errno != tc.errno {
			t.Fatalf("%s: reply cookie %d errno %d, want %d errno %d", tc.name, r.cookie, r.errno, cookie, tc.errno)
		}
		if tc.readsLength > 0 && !bytes.Equal(r.data, data[tc.off:tc.off+uint64(tc.length)]) {
			t.Fatalf("%s: wrong bytes", tc.name)
		}
	}
}

func TestBackendErrorAnswersOneRequest(t *testing.T) {
	data := randomBytes(6, 1<<20)
	c := transmissionClient(t, failingBackend{Backend: memBackend(data), badOff: 4096, badLen: 1})
	lens := map[uint64]int{1: 4096, 2: 8192, 3: 4096, 4: 4096}
	c.request(cmdRead, 1, 0, 4096)    // fine
	c.request(cmdRead, 2, 0, 8192)    // touches the bad byte
	c.request(cmdRead, 3, 4096, 4096) // the bad block
	c.request(cmdRead, 4, 8192, 4096) // fine
	offsets := map[uint64]int{1: 0, 4: 8192}
	got := map[uint64]uint32{}
	for range 4 {
		r := c.reply(lens)
		got[r.cookie] = r.errno
		if r.errno == 0 && !bytes.Equal(r.data, data[offsets[r.cookie]:][:4096]) {
			t.Errorf("cookie %d: wrong bytes", r.cookie)
		}
	}
	want := map[uint64]uint32{1: 0, 2: errEIO, 3: errEIO, 4: 0}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("cookie %d: errno %d, want %d", k, got[k], v)
		}
	}
	c.readsFirstBlock(data)
}

func TestReadTimeout(t *testing.T) {
	data := randomBytes(7, 64<<10)
	gate := make(chan struct{})
	t.Cleanup(func() { close(gate) })
	c := transmissionClient(t, gatedBackend{Backend: memBackend(data), gates: map[int64]chan struct{}{0: gate}},
		WithReadTimeout(100*time.Millisecond))
	c.request(cmdRead, 1, 0, 4096)
	c.request(cmdRead, 2, 4096, 4096)
	c.expectReply(2, 0, map[uint64]int{2: 4096})
	c.expectReply(1, errEIO, nil)
	// The connection goes on while the stuck read still holds its buffer.
	c.request(cmdRead, 3, 4096, 4096)
	c.expectReply(3, 0, map[uint64]int{3: 4096})
}

func TestDiscFinishesInFlight(t *testing.T) {
	data := randomBytes(8, 64<<10)
	gate := make(chan struct{})
	c := transmissionClient(t, gatedBackend{Backend: memBackend(data), gates: map[int64]chan struct{}{0: gate}})
	c.request(cmdRead, 1, 0, 4096)
	c.request(cmdDisc, 2, 0, 0)
	time.AfterFunc(50*time.Millisecond, func() { close(gate) })
	r := c.expectReply(1, 0, map[uint64]int{1: 4096})
	if !bytes.Equal(r.data, data[:4096]) {
		t.Fatal("wrong bytes")
	}
	c.expectClosed()
}

func TestMaxInFlight(t *testing.T) {
	data := randomBytes(9, 64<<10)
	gates := map[int64]chan struct{}{0: make(chan struct{}), 4096: make(chan struct{})}
	c := transmissionClient(t, gatedBackend{Backend: memBackend(data), gates: gates}, WithMaxInFlight(2))
	lens := map[uint64]int{1: 4096, 2: 4096, 3: 4096}
	c.request(cmdRead, 1, 0, 4096)
	c.request(cmdRead, 2, 4096, 4096)
	c.request(cmdRead, 3, 8192, 4096) // waits for a slot: not even read yet
	c.request(cmdFlush, 4, 0, 0)
	_ = c.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.r.ReadByte(); err == nil {
		t.Fatal("a reply came while both slots were busy")
	}
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	close(gates[4096])
	c.expectReply(2, 0, lens)
	// Read 3 and the flush now run side by side, in either order.
	seen := map[uint64]bool{}
	for range 2 {
		r := c.reply(lens)
		if r.errno != 0 || (r.cookie != 3 && r.cookie != 4) || seen[r.cookie] {
			t.Fatalf("reply cookie %d errno %d, want 3 and 4", r.cookie, r.errno)
		}
		seen[r.cookie] = true
	}
	close(gates[0])
	c.expectReply(1, 0, lens)
}

func TestBadRequestMagicCloses(t *testing.T) {
	c := transmissionClient(t, memBackend(make([]byte, 4096)))
	b := requestBytes(cmdRead, 1, 0, 512)
	b[0] ^= 0xff
	c.write(b)
	c.expectClosed()
}

func TestTruncatedRequestCloses(t *testing.T) {
	c := transmissionClient(t, memBackend(make([]byte, 4096)))
	c.write(requestBytes(cmdRead, 1, 0, 512)[:13])
	_ = c.c.(interface{ CloseWrite() error }).CloseWrite()
	c.expectClosed()
	c = transmissionClient(t, memBackend(make([]byte, 4096)))
	c.request(cmdWrite, 1, 0, 4096)
	c.write(make([]byte, 100)) // payload cut short
	_ = c.c.(interface{ CloseWrite() error }).CloseWrite()
	if b, err := io.ReadAll(c.r); err != nil || len(b) != 0 {
		t.Fatalf("after a truncated write payload: %d bytes, %v", len(b), err)
	}
}
