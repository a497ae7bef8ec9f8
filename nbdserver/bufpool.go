package nbdserver

import (
	"math/bits"
	"sync"
)

// Read buffers come in power-of-two classes from PreferredBlockSize to
// MaximumPayload, pooled so that steady reads do not allocate.
const (
	minClassShift = 12 // PreferredBlockSize
	maxClassShift = 25 // MaximumPayload
)

type bufferPool struct {
	classes [maxClassShift - minClassShift + 1]sync.Pool
}

// classSize is the capacity of the buffer that holds n bytes (1 <= n <=
// MaximumPayload); it is also what the buffer is charged to the budget.
func classSize(n int) int64 {
	shift := max(bits.Len(uint(n-1)), minClassShift)
	return 1 << shift
}

// get returns a buffer of length n (1 <= n <= MaximumPayload).
func (p *bufferPool) get(n int) []byte {
	size := classSize(n)
	pool := &p.classes[bits.Len64(uint64(size))-1-minClassShift]
	if b, ok := pool.Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, size)
}

// put returns a buffer got from get.
func (p *bufferPool) put(b []byte) {
	size := cap(b)
	pool := &p.classes[bits.Len64(uint64(size))-1-minClassShift]
	b = b[:0]
	pool.Put(&b)
}
