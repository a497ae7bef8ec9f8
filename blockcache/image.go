package blockcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// ErrTimeout means a read could not be served within the read timeout,
// typically because the registry is down or too slow.
var ErrTimeout = errors.New("read timed out")

// Image serves the flattened ext4 image of one artifact: ReadAt maps a
// byte range to chunks, takes them from the store or fetches them, and
// copies. It satisfies io.ReaderAt plus Size, the block-device backend
// interface, and is safe for concurrent use.
type Image struct {
	art     *artifact.Artifact
	ix      *artifact.Index
	store   *Store
	fetcher *RangeFetcher
	loader  *loader
	cfg     imageConfig
	stats   *counters
	limiter *tokenBucket

	cancel context.CancelFunc
	bg     sync.WaitGroup
	closed atomic.Bool

	recMu sync.Mutex
	rec   *recorder // nil unless WithRecording
	// link measures the link to the registry, for fault-around (nil: off).
	link func() (rate float64, rtt time.Duration, ok bool)

	streams *streams // nil without readahead
}

var _ interface {
	io.ReaderAt
	Size() int64
} = (*Image)(nil)

// Open serves the image of art from store, fetching what is missing from
// art's repository. ctx carries the logger; the image lives until Close,
// not until ctx ends. Opening does not wait for the registry: a fully cached
// image reads with the registry down. It starts, in the background, the
// registry client (ping, token, a kept-alive connection), so the first
// fault pays only its own range request; and prefetch, if any.
func Open(ctx context.Context, art *artifact.Artifact, store *Store, opts ...Option) (*Image, error) {
	if art == nil || art.Index == nil {
		return nil, errors.New("open image: artifact without an index")
	}
	if store == nil {
		return nil, errors.New("open image: no chunk store")
	}
	if art.Data.Size != art.Index.DataSize {
		return nil, fmt.Errorf("open image %s: data blob is %d bytes, index says %d: %w", art.Descriptor.Digest, art.Data.Size, art.Index.DataSize, artifact.ErrBadIndex)
	}
	cfg := defaultImageConfig()
	for _, o := range opts {
		o(&cfg)
	}
	dec, err := store.decoder(art.Index.ChunkSize)
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", art.Descriptor.Digest, err)
	}
	base, cancel := context.WithCancel(context.WithoutCancel(ctx))
	im := &Image{
		art: art, ix: art.Index, store: store, cfg: cfg, stats: newCounters(), cancel: cancel,
		fetcher: NewRangeFetcher(art.Repo, art.Data, append([]FetchOption{withMaxConns(cfg.concurrency)}, cfg.fetchOpts...)...),
	}
	if cfg.record {
		im.rec = &recorder{seen: make([]bool, len(art.Index.Chunks))}
	}
	if cfg.readahead > 0 {
		im.streams = &streams{max: min(cfg.readahead, cfg.maxRange)}
	}
	var fetch rangeFetcher = im.fetcher
	if cfg.fetcher != nil {
		fetch = cfg.fetcher
	} else {
		im.fetcher.Warm(base)
	}
	if m, ok := fetch.(linkMeter); ok && cfg.faultAround > 0 {
		im.link = m.Link
	}
	if cfg.link != nil && cfg.faultAround > 0 {
		im.link = cfg.link
	}
	im.loader = &loader{
		ix: im.ix, fetch: fetch, store: store, dec: dec,
		sched:    newScheduler(cfg.concurrency, 1, cfg.quiet),
		maxRange: cfg.maxRange, fetchTimeout: cfg.readTimeout,
		stats: im.stats, base: base, inflight: map[[32]byte]*call{},
	}
	if cfg.rate > 0 {
		im.limiter = newTokenBucket(cfg.rate, max(cfg.maxRange, cfg.rate/10))
		if cfg.limiterClockHook != nil {
			cfg.limiterClockHook(im.limiter)
		}
	}
	if cfg.metadataFirst || cfg.profile != nil || (cfg.artifactProfile && art.Profile != nil) || cfg.rate > 0 {
		im.bg.Add(1)
		go im.prefetch(base)
	}
	return im, nil
}

// Size returns the size of the flattened image in bytes.
func (im *Image) Size() int64 { return im.ix.ImageSize }

// ReadAt reads len(p) bytes at off. Reading past the end returns the bytes
// up to it and io.EOF. A read that cannot be served in the read timeout
// returns an error wrapping ErrTimeout; one whose chunk fails verification
// twice, ErrChunkCorrupt.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	size := im.ix.ImageSize
	switch {
	case im.closed.Load():
		return 0, ErrClosed
	case off < 0:
		return 0, fmt.Errorf("read at offset %d: negative offset", off)
	case off >= size:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	want, eof := p, false
	if int64(len(p)) > size-off {
		want, eof = p[:size-off], true
	}
	first, last := im.chunkRange(off, len(want))
	idxs := make([]int, 0, last-first+1)
	nonZero := 0
	for i := first; i <= last; i++ {
		idxs = append(idxs, i)
		if !im.ix.Chunks[i].Zero() {
			nonZero++
		}
	}
	im.record(first, last)
	im.stats.reads.Add(1)

	if im.copyCached(want, off, first, last) {
		im.stats.hits.Add(int64(nonZero))
		im.stats.bytesRead.Add(int64(len(want)))
		if eof {
			return len(want), io.EOF
		}
		return len(want), nil
	}

	start := time.Now()
	ctx, cancel := withTimeout(im.loader.base, im.cfg.readTimeout)
	defer cancel()
	ahead, taken := im.plan(first, last), 0
	data, misses, err := im.loader.loadAhead(ctx, idxs, ahead, foreground, &taken)
	if taken < len(ahead) {
		im.streams.cut(first, last+1+taken)
	}
	im.stats.hits.Add(int64(nonZero - misses))
	im.stats.misses.Add(int64(misses))
	if misses > 0 {
		im.stats.faultLatency.observe(time.Since(start))
	}
	if err != nil {
		im.stats.readErrors.Add(1)
		if im.closed.Load() {
			return 0, fmt.Errorf("read of %d bytes at offset %d: %w", len(want), off, ErrClosed)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			im.stats.timeouts.Add(1)
			return 0, fmt.Errorf("read of %d bytes at offset %d: %w after %s: %w", len(want), off, ErrTimeout, im.cfg.readTimeout, err)
		}
		return 0, fmt.Errorf("read of %d bytes at offset %d: %w", len(want), off, err)
	}
	for k, i := range idxs {
		sp := im.span(i, off, len(want))
		dst := want[sp.lo-off : sp.hi-off]
		if data[k] == nil {
			clear(dst)
		} else {
			copy(dst, data[k][sp.lo-sp.start:sp.hi-sp.start])
		}
	}
	im.stats.bytesRead.Add(int64(len(want)))
	if eof {
		return len(want), io.EOF
	}
	return len(want), nil
}

// ReadAtCached fills p from off only if every byte is in memory or in a
// verified chunk file, never waiting on the network (nbdserver's
// CachedReader); it reports whether it did.
func (im *Image) ReadAtCached(p []byte, off int64) bool {
	if im.closed.Load() || off < 0 || len(p) == 0 || off+int64(len(p)) > im.ix.ImageSize {
		return false
	}
	first, last := im.chunkRange(off, len(p))
	if !im.copyCached(p, off, first, last) {
		return false
	}
	im.record(first, last)
	im.stats.reads.Add(1)
	im.stats.bytesRead.Add(int64(len(p)))
	for i := first; i <= last; i++ {
		if !im.ix.Chunks[i].Zero() {
			im.stats.hits.Add(1)
		}
	}
	return true
}

// ReadAtFiles describes where the n bytes at off are, if every one of them
// is in a chunk file this process has verified (or is zero), without
// waiting (nbdserver's FileReader, for zero-copy replies): add is called
// once per piece, in order, with an open descriptor, an offset in its file
// and a length, or with fd -1 for a run of zero bytes. The descriptors stay
// open, and their bytes unchanged, until release is called. ok false:
// nothing is held (the caller reads through ReadAtCached or ReadAt).
func (im *Image) ReadAtFiles(off int64, n int, add func(fd int, off, n int64)) (release func(), ok bool) {
	if im.closed.Load() || off < 0 || n <= 0 || off > im.ix.ImageSize-int64(n) {
		return nil, false
	}
	first, last := im.chunkRange(off, n)
	var files []*openFile
	release = func() {
		for _, f := range files {
			im.store.fds.release(f)
		}
	}
	type piece struct{ fd, off, n int64 }
	var buf [8]piece
	pieces := buf[:0]
	hits := 0
	for i := first; i <= last; i++ {
		sp := im.span(i, off, n)
		c := &im.ix.Chunks[i]
		if c.Zero() {
			pieces = append(pieces, piece{-1, 0, sp.hi - sp.lo})
			continue
		}
		f, ok := im.store.openVerified(c.Digest)
		if !ok {
			release()
			return nil, false
		}
		files = append(files, f)
		pieces = append(pieces, piece{int64(f.fd), sp.lo - sp.start, sp.hi - sp.lo})
		hits++
	}
	for _, p := range pieces {
		add(int(p.fd), p.off, p.n)
	}
	im.record(first, last)
	im.stats.reads.Add(1)
	im.stats.bytesRead.Add(int64(n))
	im.stats.hits.Add(int64(hits))
	return release, true
}

// chunkRange returns the first and last chunk of the n bytes at off (n > 0).
func (im *Image) chunkRange(off int64, n int) (first, last int) {
	cs := im.ix.ChunkSize
	return int(off / cs), int((off + int64(n) - 1) / cs)
}

// chunkSpan is the part of chunk i that a read covers: image bytes
// [lo, hi), the chunk starting at image offset start.
type chunkSpan struct{ start, lo, hi int64 }

// span returns chunk i's part of the n bytes at off.
func (im *Image) span(i int, off int64, n int) chunkSpan {
	start := int64(i) * im.ix.ChunkSize
	return chunkSpan{start: start, lo: max(off, start), hi: min(off+int64(n), start+im.ix.ChunkLen(i))}
}

// copyCached serves a read entirely from memory and verified chunk files,
// copying chunks first..last's part of [off, off+len(want)); false if any
// chunk needs the slow path.
func (im *Image) copyCached(want []byte, off int64, first, last int) bool {
	for i := first; i <= last; i++ {
		sp := im.span(i, off, len(want))
		dst := want[sp.lo-off : sp.hi-off]
		c := &im.ix.Chunks[i]
		if c.Zero() {
			clear(dst)
			continue
		}
		if !im.store.ReadVerified(c.Digest, dst, sp.lo-sp.start) {
			return false
		}
	}
	return true
}

// withTimeout is context.WithTimeout, with d <= 0 meaning no deadline.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// record notes chunks first..last as read, if the image records (no
// lock on a read otherwise).
func (im *Image) record(first, last int) {
	if im.rec == nil {
		return
	}
	im.recMu.Lock()
	im.rec.note(first, last)
	im.recMu.Unlock()
}

// Recorded returns the chunks reads have touched so far, in the order they
// were first read: a profile for the next start of this image. It is
// empty unless the image was opened WithRecording.
func (im *Image) Recorded() artifact.Profile {
	p := artifact.Profile{ChunkSize: im.ix.ChunkSize}
	if im.rec == nil {
		return p
	}
	im.recMu.Lock()
	defer im.recMu.Unlock()
	p.Chunks = append([]int(nil), im.rec.order...)
	return p
}

// Stats returns a snapshot of the image's statistics.
func (im *Image) Stats() Stats {
	s := Stats{
		ImageSize: im.ix.ImageSize, DataSize: im.ix.DataSize,
		ChunksTotal:      len(im.ix.Chunks),
		BytesFetched:     im.stats.bytesFetched.Load(),
		BackgroundBytes:  im.stats.backgroundBytes.Load(),
		Fetches:          im.stats.fetches.Load(),
		Fetcher:          im.fetcher.Stats(),
		CacheHits:        im.stats.hits.Load(),
		CacheMisses:      im.stats.misses.Load(),
		CorruptChunks:    im.stats.corrupt.Load(),
		Reads:            im.stats.reads.Load(),
		BytesRead:        im.stats.bytesRead.Load(),
		ReadErrors:       im.stats.readErrors.Load(),
		Timeouts:         im.stats.timeouts.Load(),
		FaultLatency:     im.stats.faultLatency.snapshot(),
		BackgroundDone:   im.stats.backgroundDone.Load(),
		BackgroundYields: im.loader.sched.yields.Load(),
		ReadaheadChunks:  im.stats.aheadChunks.Load(),
		MetadataChunks:   im.stats.metadataChunks.Load(),
	}
	for _, c := range im.ix.Chunks {
		switch {
		case c.Zero():
			s.ChunksZero++
			s.ChunksPresent++
		case im.store.Has(c.Digest):
			s.ChunksPresent++
		}
	}
	if s.ChunksTotal > 0 {
		s.PercentComplete = 100 * float64(s.ChunksPresent) / float64(s.ChunksTotal)
	} else {
		s.PercentComplete = 100
	}
	return s
}

// Close stops prefetch and waits for fetches in flight. Reads after Close
// fail with ErrClosed. The store stays open.
func (im *Image) Close() error {
	if im.closed.Swap(true) {
		return nil
	}
	im.cancel()
	im.bg.Wait()
	im.loader.close()
	return nil
}
