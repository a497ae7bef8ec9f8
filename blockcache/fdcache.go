package blockcache

import (
	"container/list"
	"sync"

	"golang.org/x/sys/unix"
)

// fdCache keeps chunk files open for partial reads, so a warm 4 KiB read is
// one pread instead of open, read and close. Raw descriptors: the Go
// runtime's poller has nothing to add for regular files.
type fdCache struct {
	mu  sync.Mutex
	m   map[[32]byte]*openFile
	lru *list.List
	max int
}

type openFile struct {
	d       [32]byte
	fd      int
	refs    int
	dropped bool
	elem    *list.Element
}

// fdCacheSize keeps up to half the descriptors the process may open (Go
// raises the soft limit to the hard one at start), at most 65536: enough
// for every chunk of a few GiB of images at the default chunk size.
func fdCacheSize() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < 2048 {
		return 512
	}
	return int(min(rl.Cur/2, 65536))
}

func newFDCache(max int) *fdCache {
	return &fdCache{m: map[[32]byte]*openFile{}, lru: list.New(), max: max}
}

// acquire returns an open descriptor of chunk d's file; release it after.
func (c *fdCache) acquire(d [32]byte, path func() string) (*openFile, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.m[d]; ok {
		f.refs++
		c.lru.MoveToFront(f.elem)
		return f, nil
	}
	fd, err := unix.Open(path(), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	f := &openFile{d: d, fd: fd, refs: 1}
	f.elem = c.lru.PushFront(f)
	c.m[d] = f
	for c.lru.Len() > c.max {
		old := c.lru.Back().Value.(*openFile)
		c.dropLocked(old)
	}
	return f, nil
}

func (c *fdCache) release(f *openFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.refs--
	if f.dropped && f.refs == 0 {
		unix.Close(f.fd)
	}
}

// drop forgets chunk d's descriptor (its file is going away); it is closed
// once no read holds it.
func (c *fdCache) drop(d [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.m[d]; ok {
		c.dropLocked(f)
	}
}

func (c *fdCache) dropLocked(f *openFile) {
	if f.dropped {
		return
	}
	f.dropped = true
	c.lru.Remove(f.elem)
	delete(c.m, f.d)
	if f.refs == 0 {
		unix.Close(f.fd)
	}
}

func (c *fdCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.m {
		c.dropLocked(f)
	}
}
