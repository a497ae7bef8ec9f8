package blockcache

import "testing"

func TestRawPool(t *testing.T) {
	var p rawPool
	for _, n := range []int{1, 100 << 10, 128 << 10, 4<<20 + 1, 8 << 20, 8<<20 + 1} {
		b := p.get(n)
		if len(b) != n || cap(b) < n {
			t.Fatalf("get(%d): len %d cap %d", n, len(b), cap(b))
		}
		p.put(b)
		if c := p.get(n); len(c) != n {
			t.Fatalf("get(%d) after put: len %d", n, len(c))
		}
	}
	// A buffer of a foreign capacity is not pooled (it would be handed out
	// as a larger class than it is).
	p.put(make([]byte, 100<<10))
	if b := p.get(128 << 10); cap(b) != 128<<10 {
		t.Fatalf("get(128 KiB) returned a buffer of capacity %d", cap(b))
	}
}
