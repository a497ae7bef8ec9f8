package blockcache

import (
	"container/list"
	"sync"
)

// hotCache is the store's in-memory layer: verified chunks, least recently
// used evicted first, bounded in bytes. Slices handed out are never
// modified, so readers copy from them without holding the lock.
type hotCache struct {
	mu    sync.Mutex
	limit int64
	used  int64
	items map[[32]byte]*list.Element
	lru   *list.List // of *hotItem
}

type hotItem struct {
	d    [32]byte
	data []byte
}

func newHotCache(limit int64) *hotCache {
	return &hotCache{limit: limit, items: map[[32]byte]*list.Element{}, lru: list.New()}
}

func (h *hotCache) get(d [32]byte) ([]byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	el, ok := h.items[d]
	if !ok {
		return nil, false
	}
	h.lru.MoveToFront(el)
	return el.Value.(*hotItem).data, true
}

func (h *hotCache) has(d [32]byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.items[d]
	return ok
}

func (h *hotCache) put(d [32]byte, data []byte) {
	n := int64(len(data))
	if n > h.limit {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if el, ok := h.items[d]; ok {
		h.lru.MoveToFront(el)
		return
	}
	for h.used+n > h.limit {
		h.removeLocked(h.lru.Back())
	}
	h.items[d] = h.lru.PushFront(&hotItem{d, data})
	h.used += n
}

func (h *hotCache) remove(d [32]byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if el, ok := h.items[d]; ok {
		h.removeLocked(el)
	}
}

func (h *hotCache) removeLocked(el *list.Element) {
	it := h.lru.Remove(el).(*hotItem)
	delete(h.items, it.d)
	h.used -= int64(len(it.data))
}

func (h *hotCache) size() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.used
}
