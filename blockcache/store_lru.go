package blockcache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Has reports whether the store holds chunk d (on disk or in memory).
func (s *Store) Has(d [32]byte) bool {
	if s.hot.has(d) {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.entries[d]
	return ok
}

// Get returns the bytes of chunk d, or false if the store does not hold it.
// Bytes read from disk are verified first; a file that does not match its
// name is deleted. The returned slice must not be modified.
func (s *Store) Get(ctx context.Context, d [32]byte) ([]byte, bool) {
	if b, ok := s.hot.get(d); ok {
		s.mu.Lock()
		if e, ok := s.entries[d]; ok {
			s.lru.MoveToFront(e.elem)
		}
		s.mu.Unlock()
		return b, true
	}
	unpin, ok := s.Pin(d)
	if !ok {
		return nil, false
	}
	_, file := s.path(d)
	b, err := os.ReadFile(file)
	unpin()
	if err == nil && sha256.Sum256(b) == d {
		s.mu.Lock()
		if e, ok := s.entries[d]; ok {
			e.verified = true
		}
		s.mu.Unlock()
		s.hot.put(d, b)
		return b, true
	}
	if err == nil {
		err = errors.New("content does not match its name")
	}
	zerolog.Ctx(ctx).Warn().Err(err).Str("file", file).Msg("deleting bad chunk file")
	s.mu.Lock()
	if e, ok := s.entries[d]; ok {
		s.removeLocked(e)
		s.corrupt++
	}
	s.mu.Unlock()
	return nil, false
}

// ReadVerified copies the bytes of chunk d at off into p, from memory or
// from a chunk file already verified by this process, without reading and
// hashing the whole chunk. It returns false if it cannot (the caller then
// goes through Get, which verifies).
func (s *Store) ReadVerified(d [32]byte, p []byte, off int64) bool {
	if b, ok := s.hot.get(d); ok {
		if off < 0 || off+int64(len(p)) > int64(len(b)) {
			return false
		}
		copy(p, b[off:])
		return true
	}
	f, ok := s.openVerified(d)
	if !ok {
		return false
	}
	defer s.fds.release(f)
	for len(p) > 0 {
		n, err := unix.Pread(f.fd, p, off)
		if err != nil || n == 0 {
			return false
		}
		p, off = p[n:], off+int64(n)
	}
	return true
}

// openVerified returns an open descriptor of chunk d's file if this process
// has verified it; release it with s.fds.release. An open descriptor keeps
// reading the right bytes even if the chunk is evicted meanwhile: the file
// is only unlinked, and chunk files are never written in place.
func (s *Store) openVerified(d [32]byte) (*openFile, bool) {
	s.mu.Lock()
	e, ok := s.entries[d]
	if !ok || !e.verified {
		s.mu.Unlock()
		return nil, false
	}
	s.lru.MoveToFront(e.elem)
	s.mu.Unlock()
	// The path is built only to open a file the cache does not hold: a
	// warm read allocates nothing for it.
	f, err := s.fds.acquire(d, func() string { _, file := s.path(d); return file })
	if err != nil {
		return nil, false
	}
	return f, true
}

// Pin keeps chunk d from eviction until unpin is called; false if the
// store does not hold it on disk.
func (s *Store) Pin(d [32]byte) (unpin func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[d]
	if !ok {
		return nil, false
	}
	e.pins++
	s.lru.MoveToFront(e.elem)
	done := false
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !done {
			done = true
			e.pins--
		}
	}, true
}

// Put stores chunk d, whose bytes the caller has verified. It evicts least
// recently used unpinned chunks to make room, and returns ErrStoreFull
// (after keeping the chunk in memory) if it cannot.
func (s *Store) Put(ctx context.Context, d [32]byte, data []byte) error {
	return s.put(ctx, d, data, true)
}

// put is Put; hot says whether to keep the chunk in memory too (not for
// background fetches, which would push out what reads use).
func (s *Store) put(ctx context.Context, d [32]byte, data []byte, hot bool) error {
	if hot {
		s.hot.put(d, data)
	}
	need := blocks(int64(len(data)))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if _, ok := s.entries[d]; ok {
		s.mu.Unlock()
		return nil
	}
	if _, ok := s.writing[d]; ok {
		s.mu.Unlock()
		return nil
	}
	if !s.evictLocked(ctx, need) {
		s.full++
		s.mu.Unlock()
		return fmt.Errorf("chunk sha256:%x (%d bytes): %w", d, len(data), ErrStoreFull)
	}
	s.used += need // reserved before the temporary file exists
	s.highWater = max(s.highWater, s.used)
	s.writing[d] = struct{}{}
	dir, file := s.path(d)
	s.mu.Unlock()

	err := s.write(dir, file, data)

	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.writing, d)
	if err != nil {
		s.used -= need
		return fmt.Errorf("chunk sha256:%x: %w", d, err)
	}
	e := &entry{digest: d, size: need, verified: true}
	e.elem = s.lru.PushFront(e)
	s.entries[d] = e
	return nil
}

// write puts data in file through a temporary file in the same directory.
func (s *Store) write(dir, file string, data []byte) error {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(dir, tmpPrefix+filepath.Base(file)[:16]+"-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && s.fsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// evictLocked evicts least recently used unpinned chunks until need more
// bytes fit under the bound; false if they cannot.
func (s *Store) evictLocked(ctx context.Context, need int64) bool {
	if need > s.limit {
		return false
	}
	for el := s.lru.Back(); el != nil && s.used+need > s.limit; {
		e := el.Value.(*entry)
		el = el.Prev()
		if e.pins > 0 {
			continue
		}
		if err := s.removeLocked(e); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("evicting a chunk")
			continue
		}
		s.evictions++
	}
	return s.used+need <= s.limit
}

// removeLocked deletes e's file and forgets it. The bytes stop counting
// only once the file is gone.
func (s *Store) removeLocked(e *entry) error {
	_, file := s.path(e.digest)
	if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.fds.drop(e.digest)
	s.lru.Remove(e.elem)
	delete(s.entries, e.digest)
	s.used -= e.size
	s.hot.remove(e.digest)
	return nil
}
