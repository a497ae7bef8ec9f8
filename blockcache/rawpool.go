package blockcache

import (
	"math/bits"
	"sync"
)

// rawPool recycles the buffers compressed ranges are fetched into: they
// are dropped as soon as their chunks are decoded, and at tens of MB/s of
// fetching they would otherwise be a third of what the collector sweeps.
// Buffers come in power-of-two classes from 64 KiB to 8 MiB; other sizes
// are not pooled.
type rawPool struct {
	classes [rawMaxShift - rawMinShift + 1]sync.Pool
}

const (
	rawMinShift = 16
	rawMaxShift = 23
)

func rawClass(n int) (int, bool) {
	shift := max(bits.Len(uint(n-1)), rawMinShift)
	return shift - rawMinShift, n > 0 && shift <= rawMaxShift
}

// get returns a buffer of length n; its bytes are not zeroed.
func (p *rawPool) get(n int) []byte {
	c, ok := rawClass(n)
	if !ok {
		return make([]byte, n)
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+rawMinShift))
}

// put recycles a buffer from get; nothing may use it afterwards.
func (p *rawPool) put(b []byte) {
	c, ok := rawClass(cap(b))
	if !ok || cap(b) != 1<<(c+rawMinShift) {
		return
	}
	b = b[:0]
	p.classes[c].Put(&b)
}
