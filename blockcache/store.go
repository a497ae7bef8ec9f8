package blockcache

import (
	"container/list"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/rs/zerolog"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"
)

// Store errors.
var (
	// ErrStoreFull means a chunk could not be cached: making room would
	// have needed evicting chunks that readers hold, or the chunk alone is
	// bigger than the bound. The chunk is still served.
	ErrStoreFull = errors.New("chunk store full")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("closed")
)

// Store is the on-disk chunk cache, shared by every image: one file per
// chunk holding its uncompressed bytes, named by the hex sha256 of those
// bytes, under DIR/ab/ (the first byte of the digest). It never
// holds more than its bound (file data counted in 4 KiB blocks; temporary
// files count from before they are written), evicting the least recently
// used chunks no reader holds.
//
// Crash safety: a chunk is written to a temporary file in its final
// directory and renamed into place, so a file under a digest name was
// complete when renamed. There is no fsync (unless WithFsync): after a power
// loss a file may hold garbage, which costs nothing because every load from
// disk is verified against the name and a mismatching file is deleted, not
// served. Opening removes temporary files left by a crash and re-indexes the
// chunk files; the least recently used order restarts from modification
// times. A lock file keeps two processes from sharing a directory.
//
// A bounded in-memory layer keeps recently used chunks so that consecutive
// reads of one chunk do not each read and hash the file.
type Store struct {
	dir   string
	limit int64
	fsync bool
	lock  *os.File
	hot   *hotCache

	mu        sync.Mutex
	closed    bool
	entries   map[[32]byte]*entry
	lru       *list.List // of *entry, most recently used first
	writing   map[[32]byte]struct{}
	used      int64 // blocks of indexed files plus reservations, in bytes
	highWater int64
	evictions int64
	corrupt   int64
	full      int64
	fds       *fdCache // open chunk files for partial reads
	// fetchMem bounds the bytes of range fetches in flight across every
	// image using this store, so memory does not grow with the image count.
	fetchMem *semaphore.Weighted
	// decoded bounds the bytes of verified chunks decoded but not yet
	// written to disk, across every image (see loader.decodeSlot); a
	// fetch that finds it spent stores what it holds before decoding more.
	decoded       *semaphore.Weighted
	decodedBudget int64
	// unstored counts those bytes; unstoredPeak is its high mark;
	// decodedWaits counts decodes that found the budget spent.
	unstored, unstoredPeak, decodedWaits atomic.Int64
	// decoders are shared by the images of one chunk size (DecodeAll is
	// safe for concurrent use): their buffers are the biggest per-image
	// cost otherwise.
	decMu    sync.Mutex
	decoders map[int64]*zstd.Decoder
	// streams are the stream decoders of each chunk size (about 0.8 MiB
	// each at 256 KiB): at most maxStreamDecoders, idle ones kept.
	streams map[int64]*streamPool
	// raws recycles the buffers ranges are fetched into.
	raws rawPool
}

type entry struct {
	digest [32]byte
	size   int64 // accounted bytes (file size rounded up to 4 KiB)
	pins   int
	elem   *list.Element
	// verified: this process wrote the file or has checked its content, so
	// parts of it may be read without hashing it whole again.
	verified bool
}

// StoreStats is a snapshot of a store.
type StoreStats struct {
	// Used is the bytes accounted (4 KiB blocks of chunk files and of
	// writes in progress); HighWater its maximum since opening; Limit the
	// bound.
	Used, HighWater, Limit int64
	Chunks                 int
	// Evictions counts chunks evicted for room; Corrupt files found not to
	// match their name and deleted; Full puts refused for lack of room.
	Evictions, Corrupt, Full int64
	// HotBytes is the size of the in-memory layer.
	HotBytes int64
}

type storeConfig struct {
	fsync         bool
	hotBytes      int64
	decodedBudget int64
}

// StoreOption configures a Store.
type StoreOption func(*storeConfig)

// WithFsync fsyncs every chunk file before renaming it into place
// (default off: torn files are caught by verification).
func WithFsync(on bool) StoreOption { return func(c *storeConfig) { c.fsync = on } }

// WithHotBytes bounds the in-memory layer (default DefaultHotBytes; 0
// disables it).
func WithHotBytes(n int64) StoreOption { return func(c *storeConfig) { c.hotBytes = n } }

// WithDecodedBudget bounds the bytes of decoded chunks waiting to be
// written to disk, over every image of the store (default
// DefaultDecodedBudget). A chunk bigger than the budget takes all of it.
func WithDecodedBudget(n int64) StoreOption { return func(c *storeConfig) { c.decodedBudget = n } }

// fetchMemory is the bound of range-fetch bytes in flight per store.
const fetchMemory = 8 << 20

// decoder returns the store's shared decoder for chunks of chunkSize.
func (s *Store) decoder(chunkSize int64) (*zstd.Decoder, error) {
	s.decMu.Lock()
	defer s.decMu.Unlock()
	if d, ok := s.decoders[chunkSize]; ok {
		return d, nil
	}
	d, err := newDecoder(chunkSize)
	if err != nil {
		return nil, err
	}
	if s.decoders == nil {
		s.decoders = map[int64]*zstd.Decoder{}
	}
	s.decoders[chunkSize] = d
	return d, nil
}

// maxStreamDecoders bounds the stream decoders of one chunk size, and so
// the foreground fetches decoded as they arrive at once; others decode
// once their bytes are all in.
const maxStreamDecoders = 4

type streamPool struct {
	free []*zstd.Decoder
	n    int
}

// streamDecoder takes a synchronous stream decoder for chunks of
// chunkSize, window capped at the chunk size like the shared decoder's;
// nil if maxStreamDecoders are in use. Give it back with
// putStreamDecoder.
func (s *Store) streamDecoder(chunkSize int64) *zstd.Decoder {
	s.decMu.Lock()
	defer s.decMu.Unlock()
	if s.streams == nil {
		s.streams = map[int64]*streamPool{}
	}
	p := s.streams[chunkSize]
	if p == nil {
		p = &streamPool{}
		s.streams[chunkSize] = p
	}
	if k := len(p.free); k > 0 {
		d := p.free[k-1]
		p.free = p.free[:k-1]
		return d
	}
	if p.n >= maxStreamDecoders {
		return nil
	}
	// The frame's xxhash is not checked: the chunk's sha256 is, and a
	// fault's last block decodes sooner without it.
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(chunkSize)),
		zstd.WithDecoderMaxWindow(uint64(max(chunkSize, zstd.MinWindowSize))), zstd.IgnoreChecksum(true))
	if err != nil {
		return nil
	}
	p.n++
	return d
}

func (s *Store) putStreamDecoder(chunkSize int64, d *zstd.Decoder) {
	_ = d.Reset(nil) // drop the reference to the last input
	s.decMu.Lock()
	defer s.decMu.Unlock()
	p := s.streams[chunkSize]
	if p == nil { // the store was closed meanwhile
		d.Close()
		return
	}
	p.free = append(p.free, d)
}

const (
	blockSize = 4096
	tmpPrefix = ".tmp-"
	lockName  = ".lock"
)

func blocks(n int64) int64 { return (n + blockSize - 1) / blockSize * blockSize }

// OpenStore opens (creating it if needed) the store in dir, bounded to
// limit bytes, removing leftovers of a crash and evicting down to the bound.
func OpenStore(ctx context.Context, dir string, limit int64, opts ...StoreOption) (*Store, error) {
	cfg := storeConfig{hotBytes: DefaultHotBytes, decodedBudget: DefaultDecodedBudget}
	for _, o := range opts {
		o(&cfg)
	}
	if limit <= 0 {
		return nil, fmt.Errorf("chunk store %s: bound of %d bytes", dir, limit)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chunk store: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("chunk store: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("chunk store %s is in use by another process: %w", dir, err)
	}
	s := &Store{
		dir: dir, limit: limit, fsync: cfg.fsync, lock: lock,
		hot:     newHotCache(cfg.hotBytes),
		entries: map[[32]byte]*entry{}, lru: list.New(),
		writing:  map[[32]byte]struct{}{},
		fds:      newFDCache(fdCacheSize()),
		fetchMem: semaphore.NewWeighted(fetchMemory),
		decoded:  semaphore.NewWeighted(max(cfg.decodedBudget, 1)), decodedBudget: max(cfg.decodedBudget, 1),
	}
	if err := s.reindex(ctx); err != nil {
		lock.Close()
		return nil, fmt.Errorf("chunk store %s: %w", dir, err)
	}
	// Every fan-out directory exists from now on, so storing a chunk
	// never creates one: on a fresh cache that was two mkdirs per chunk
	// (ext4 makes a directory cost far more than a file), CPU taken from
	// the faults being served.
	for i := range fanOut {
		if err := os.Mkdir(filepath.Join(dir, fmt.Sprintf("%02x", i)), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			lock.Close()
			return nil, fmt.Errorf("chunk store: %w", err)
		}
	}
	s.mu.Lock()
	s.evictLocked(ctx, 0)
	s.highWater = s.used
	s.mu.Unlock()
	return s, nil
}

// fanOut is the number of directories chunk files are spread over, named
// by the first byte of their digest: DIR/ab/abcd... A 10 GiB cache of
// 100 KiB files puts about 400 in each.
const fanOut = 256

// reindex walks DIR/ab/, removing temporary and foreign files and
// indexing chunk files, oldest first in the LRU order. Chunk files of the
// earlier two-level layout (DIR/ab/cd/abcd...) are moved up into DIR/ab/.
func (s *Store) reindex(ctx context.Context) error {
	log := zerolog.Ctx(ctx)
	type found struct {
		e     *entry
		mtime time.Time
	}
	var all []found
	var removed, moved int
	// index indexes the chunk file name in dir, or removes it when it is
	// not one whose digest starts with prefix (a temporary file of an
	// interrupted write, or not ours). It returns the file's path if kept.
	index := func(dir, prefix string, f fs.DirEntry) (string, error) {
		path := filepath.Join(dir, f.Name())
		d, ok := parseDigest(f.Name())
		var info fs.FileInfo
		var err error
		if ok && f.Type().IsRegular() && strings.HasPrefix(f.Name(), prefix) {
			info, err = f.Info()
		}
		if info == nil || err != nil {
			removed++
			return "", os.RemoveAll(path)
		}
		all = append(all, found{&entry{digest: d, size: blocks(info.Size())}, info.ModTime()})
		return path, nil
	}
	l1, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, a := range l1 {
		if !a.IsDir() || !isHexByte(a.Name()) {
			continue
		}
		top := filepath.Join(s.dir, a.Name())
		l2, err := os.ReadDir(top)
		if err != nil {
			return err
		}
		for _, b := range l2 {
			if !b.IsDir() || !isHexByte(b.Name()) {
				if _, err := index(top, a.Name(), b); err != nil {
					return err
				}
				continue
			}
			// The two-level layout: move its chunk files up.
			leaf := filepath.Join(top, b.Name())
			files, err := os.ReadDir(leaf)
			if err != nil {
				return err
			}
			for _, f := range files {
				path, err := index(leaf, a.Name()+b.Name(), f)
				if err != nil {
					return err
				}
				if path == "" {
					continue
				}
				if err := os.Rename(path, filepath.Join(top, f.Name())); err != nil {
					return err
				}
				moved++
			}
			if err := os.Remove(leaf); err != nil {
				return err
			}
		}
	}
	slices.SortFunc(all, func(x, y found) int { return x.mtime.Compare(y.mtime) })
	for _, f := range all {
		f.e.elem = s.lru.PushFront(f.e)
		s.entries[f.e.digest] = f.e
		s.used += f.e.size
	}
	log.Debug().Str("dir", s.dir).Int("chunks", len(all)).Int64("bytes", s.used).Int("removed", removed).Msg("chunk store opened")
	if moved > 0 {
		log.Info().Str("dir", s.dir).Int("chunks", moved).Msg("chunk store: moved chunk files of the two-level layout into one level of directories")
	}
	return nil
}

func isHexByte(s string) bool {
	_, err := hex.DecodeString(s)
	return len(s) == 2 && err == nil && strings.ToLower(s) == s
}

func parseDigest(s string) ([32]byte, bool) {
	var d [32]byte
	if len(s) != 64 || strings.ToLower(s) != s {
		return d, false
	}
	_, err := hex.Decode(d[:], []byte(s))
	return d, err == nil
}

// path returns the file of digest d and its directory.
func (s *Store) path(d [32]byte) (dir, file string) {
	h := hex.EncodeToString(d[:])
	dir = filepath.Join(s.dir, h[:2])
	return dir, filepath.Join(dir, h)
}

// Stats returns a snapshot of the store.
func (s *Store) Stats() StoreStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return StoreStats{
		Used: s.used, HighWater: s.highWater, Limit: s.limit, Chunks: len(s.entries),
		Evictions: s.evictions, Corrupt: s.corrupt, Full: s.full, HotBytes: s.hot.size(),
	}
}

// Close releases the directory. Chunks stay on disk for the next Open.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.fds.closeAll()
	s.decMu.Lock()
	for _, d := range s.decoders {
		d.Close()
	}
	s.decoders = nil
	for _, p := range s.streams {
		for _, d := range p.free {
			d.Close()
		}
	}
	s.streams = nil
	s.decMu.Unlock()
	return s.lock.Close()
}
