package nbdserver

import (
	"bytes"
	"testing"
)

// cachedBackend answers every read at once (ReadAtCached), as a warm cache
// does: its replies are batched.
type cachedBackend struct{ memBackend }

func (b cachedBackend) ReadAtCached(p []byte, off int64) bool {
	_, err := b.ReadAt(p, off)
	return err == nil
}

// Thousands of small reads sent at once are answered inline, in batches,
// every reply whole and in order.
func TestManySmallReplies(t *testing.T) {
	data := randomBytes(8, 1<<20)
	c := transmissionClient(t, cachedBackend{memBackend(data)})
	const n, size = 3000, 512
	var reqs []byte
	lens := map[uint64]int{}
	for i := range n {
		off := uint64(i*size) % uint64(len(data))
		reqs = append(reqs, requestBytes(cmdRead, uint64(i), off, size)...)
		lens[uint64(i)] = size
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := c.c.Write(reqs)
		wrote <- err
	}()
	for i := range n {
		r := c.expectReply(uint64(i), 0, lens)
		off := (i * size) % len(data)
		if !bytes.Equal(r.data, data[off:off+size]) {
			t.Fatalf("read %d: wrong bytes", i)
		}
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
}
