package blockcache

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/rs/zerolog"
	"github.com/sluice-project/sluice/imageconv/artifact"
)

// ErrChunkCorrupt means a chunk fetched twice did not decompress to bytes
// matching its digest. Such bytes are never cached or served.
var ErrChunkCorrupt = errors.New("chunk does not match its digest")

// rangeFetcher is what the loader needs of a RangeFetcher.
type rangeFetcher interface {
	FetchRange(ctx context.Context, off, n int64) ([]byte, error)
}

// registryFetcher is the part of RangeFetcher that asks the registry
// itself, past every mirror.
type registryFetcher interface {
	FetchRangeFromRegistry(ctx context.Context, off, n int64) ([]byte, error)
}

// streamFetcher is the part of RangeFetcher that lets the loader decode
// and hash chunks while the rest of their range is still arriving.
type streamFetcher interface {
	stream(ctx context.Context, off int64, dst []byte) (*rangeStream, error)
}

// loader turns chunk indices into verified chunk bytes: from the store, or
// fetched with one range request per run of chunks adjacent in the data
// blob, with at most one fetch per chunk in flight.
type loader struct {
	ix           *artifact.Index
	fetch        rangeFetcher
	store        *Store
	dec          *zstd.Decoder
	sched        *scheduler
	maxRange     int64
	fetchTimeout time.Duration
	stats        *counters

	base context.Context // the image's lifetime; fetches outlive the reads that start them
	wg   sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	inflight map[[32]byte]*call

	// unstored counts the bytes of verified chunks not yet handed to the
	// store; unstoredPeak is its high mark.
	unstored, unstoredPeak atomic.Int64

	// aheadGroups counts the fetch groups carrying readahead that have not
	// finished their range request (see aheadLimit).
	aheadGroups atomic.Int32
}

// call is one chunk being fetched; every reader that needs it waits on
// done, and background loads also on stored.
type call struct {
	index  int // a chunk index with this digest
	done   chan struct{}
	stored chan struct{} // closed once the store has been written (or failed)
	data   []byte
	err    error
	// gfg is the priority of the fetch it belongs to; fg the chunk's own
	// (a reader waits for it: it goes to the store's memory). They are
	// one, save for a readahead chunk, which is not foreground until a
	// reader comes for it, even in a range a fault fetches.
	gfg, fg *atomic.Bool
	ahead   bool        // fetched ahead of a sequential stream of faults
	own     atomic.Bool // fg of a readahead chunk
	// slot is the store's decoded budget this call holds from decode to
	// finish; finished says finish ran (its group stored it early).
	slot     int64
	finished bool
}

// fetchGroup is a run of chunks adjacent in the data blob, fetched with one
// request.
type fetchGroup struct {
	off, end int64
	calls    []*call
	fg       atomic.Bool
	yield    bool // a background fetch that waits for the quiet window (see scheduler)
	stored   bool // verifyGroup stored each chunk as it verified it
	ahead    bool // holds readahead chunks: counted in loader.aheadGroups
}

// priority is what a load is for: a read waiting (foreground), the
// profile's prefetch (background), or the pass over the whole image
// (backgroundYielding: background, and only once the link is quiet).
type priority int

const (
	background priority = iota
	foreground
	backgroundYielding
)

func newDecoder(chunkSize int64) (*zstd.Decoder, error) {
	// Cap decoding at the chunk size: a hostile blob cannot make us
	// allocate more.
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxMemory(uint64(chunkSize)), zstd.WithDecodeAllCapLimit(true))
}

// load returns the bytes of chunks idxs (nil for zero chunks), fetching the
// missing ones at priority p. misses counts the chunks that were not in the
// store.
func (l *loader) load(ctx context.Context, idxs []int, p priority) (out [][]byte, misses int, err error) {
	return l.loadAhead(ctx, idxs, nil, p, nil)
}

// loadAhead is load that also starts fetching chunks ahead, in the same
// range request as the missing chunks of idxs where the data blob has
// them next to each other (see readahead.go). It does not wait for them.
// *taken is set to how many chunks of ahead, from its start, are fetched
// (or zero chunks, which need no fetch).
func (l *loader) loadAhead(ctx context.Context, idxs, ahead []int, p priority, taken *int) (out [][]byte, misses int, err error) {
	fg := p == foreground
	out = make([][]byte, len(idxs))
	var need []int // positions in idxs
	for k, i := range idxs {
		c := &l.ix.Chunks[i]
		if c.Zero() {
			continue
		}
		if b, ok := l.store.Get(ctx, c.Digest); ok {
			out[k] = b
			continue
		}
		need = append(need, k)
	}
	if len(need) == 0 {
		return out, 0, nil
	}
	misses = len(need)
	// A fetch joined late may fail on its own deadline while this read
	// still has time: then start another.
	for len(need) > 0 {
		calls, groups, err := l.start(ctx, idxs, need, ahead, p, taken)
		if err != nil {
			return nil, misses, err
		}
		ahead = nil
		if fg && len(groups) > 0 && !groups[0].ahead {
			// The first new fetch runs on this goroutine, within this
			// read's deadline: its bytes are decoded as they arrive and the
			// read is answered with no hand-off between goroutines. A read
			// that joined it and still has time when this read's deadline
			// ends it starts another (below). The chunk files are written
			// after this read is answered. A group carrying readahead runs
			// on a goroutine of its own: the read waits only for its
			// chunks, which come first in the range.
			l.launch(groups[1:])
			l.fetchGroup(ctx, groups[0])
			go l.storeGroup(groups[0])
		} else {
			l.launch(groups)
		}
		var again []int
		for _, k := range need {
			c := calls[l.ix.Chunks[idxs[k]].Digest]
			select {
			case <-c.done:
			case <-ctx.Done():
				return nil, misses, fmt.Errorf("waiting for chunk %d: %w", idxs[k], context.Cause(ctx))
			}
			if !fg {
				// Background fetch is done once chunks are stored, not
				// merely served; this also keeps it from running ahead of
				// the disk.
				select {
				case <-c.stored:
				case <-ctx.Done():
					return nil, misses, fmt.Errorf("waiting for chunk %d to be stored: %w", idxs[k], context.Cause(ctx))
				}
			}
			switch {
			case c.err == nil:
				out[k] = c.data
			case errors.Is(c.err, context.DeadlineExceeded) && ctx.Err() == nil:
				again = append(again, k)
			default:
				return nil, misses, c.err
			}
		}
		need = again
	}
	return out, misses, nil
}

// start joins fetches in flight and sets up new ones for the rest, and for
// the chunks of ahead up to the first one cached, in flight, repeated or
// not next in the data blob (*taken says how many), which the caller
// launches.
func (l *loader) start(ctx context.Context, idxs, need, ahead []int, p priority, taken *int) (map[[32]byte]*call, []*fetchGroup, error) {
	fg := p == foreground
	calls := make(map[[32]byte]*call, len(need))
	var owned []*call
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, nil, ErrClosed
	}
	promote := false
	for _, k := range need {
		i := idxs[k]
		d := l.ix.Chunks[i].Digest
		if _, ok := calls[d]; ok {
			continue
		}
		if c, ok := l.inflight[d]; ok {
			if fg {
				// The group's flag first: for a chunk not fetched ahead,
				// fg and gfg are the same flag, and setting it before the
				// swap hid the promotion from the scheduler (a background
				// fetch waiting for its quiet window then kept the fault
				// waiting until the window ended).
				if !c.gfg.Swap(true) {
					promote = true
				}
				c.fg.Store(true)
			}
			calls[d] = c
			continue
		}
		// A fetch may have finished since the store was asked.
		if b, ok := l.store.Get(ctx, d); ok {
			c := &call{index: i, data: b, done: closedChan, stored: closedChan}
			calls[d] = c
			continue
		}
		c := &call{index: i, done: make(chan struct{}), stored: make(chan struct{})}
		l.inflight[d] = c
		calls[d] = c
		owned = append(owned, c)
	}
	if len(ahead) > 0 && int(l.aheadGroups.Load()) < l.aheadLimit() {
		// Chunks ahead ride in the fault's range: each must be next in
		// the data blob.
		var end uint64
		for _, i := range idxs {
			if c := l.ix.Chunks[i]; !c.Zero() {
				end = c.Offset + uint64(c.Length)
			}
		}
		n := 0
		for _, i := range ahead {
			ch := l.ix.Chunks[i]
			d := ch.Digest
			if !ch.Zero() {
				if _, ok := calls[d]; ok || ch.Offset != end {
					break
				}
				if _, ok := l.inflight[d]; ok || l.store.Has(d) {
					break
				}
				end = ch.Offset + uint64(ch.Length)
				c := &call{index: i, done: make(chan struct{}), stored: make(chan struct{}), ahead: true}
				l.inflight[d] = c
				owned = append(owned, c)
				l.stats.aheadChunks.Add(1)
			}
			n++
		}
		if taken != nil {
			*taken = n
		}
	}
	groups := l.group(owned, p)
	l.wg.Add(len(groups))
	l.mu.Unlock()
	if promote {
		l.sched.promote()
	}
	return calls, groups, nil
}

// launch runs fetch groups, each on a goroutine of its own, with the
// loader's context: they outlive a reader that gave up, for the readers
// that joined them. The reader that started them waits for its chunks with
// its own deadline (load).
func (l *loader) launch(groups []*fetchGroup) {
	for _, g := range groups {
		go l.run(g)
	}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// group coalesces calls whose chunks are adjacent in the data blob into
// runs of at most maxRange bytes.
func (l *loader) group(owned []*call, p priority) []*fetchGroup {
	slices.SortFunc(owned, func(a, b *call) int {
		return cmp.Compare(l.ix.Chunks[a.index].Offset, l.ix.Chunks[b.index].Offset)
	})
	var groups []*fetchGroup
	var g *fetchGroup
	for _, c := range owned {
		ch := l.ix.Chunks[c.index]
		off, end := int64(ch.Offset), int64(ch.Offset)+int64(ch.Length)
		if g == nil || off != g.end || end-g.off > l.maxRange {
			g = &fetchGroup{off: off, end: off}
			g.yield = p == backgroundYielding
			groups = append(groups, g)
		}
		g.end = end
		g.calls = append(g.calls, c)
		c.gfg, c.fg = &g.fg, &g.fg
		if c.ahead {
			c.fg = &c.own
			g.ahead = true
		} else if p == foreground {
			// A group of readahead alone is background: no reader waits
			// for it yet.
			g.fg.Store(true)
		}
	}
	for _, g := range groups {
		if g.ahead {
			l.aheadGroups.Add(1)
		}
	}
	return groups
}

// aheadLimit bounds the fetch groups carrying readahead at once: one fetch
// slot always stays for a fault elsewhere (unless there is only one).
func (l *loader) aheadLimit() int { return max(l.sched.slots-1, 1) }

// run fetches a group, verifies each chunk and wakes its waiters, then
// stores the group's chunks.
func (l *loader) run(g *fetchGroup) {
	l.fetchGroup(l.base, g)
	if g.ahead {
		l.aheadGroups.Add(-1)
	}
	l.storeGroup(g)
}

// storeGroup stores a fetched group's chunks and forgets its calls.
func (l *loader) storeGroup(g *fetchGroup) {
	defer l.wg.Done()
	if g.stored {
		return
	}
	for _, c := range g.calls {
		if !c.finished {
			l.finish(l.base, c)
		}
	}
}

// fetchGroup fetches a group within ctx, verifies each chunk and wakes its
// waiters.
func (l *loader) fetchGroup(ctx context.Context, g *fetchGroup) {
	if g.yield {
		// The quiet window first, holding nothing (see waitQuiet).
		if err := l.sched.waitQuiet(ctx, &g.fg); err != nil {
			for _, c := range g.calls {
				l.wake(c, nil, fmt.Errorf("waiting to fetch: %w", err))
			}
			return
		}
		g.yield = false
	}
	// Hold the store-wide fetch memory until the raw bytes are decoded.
	weight := min(g.end-g.off, fetchMemory)
	if err := l.store.fetchMem.Acquire(ctx, weight); err != nil {
		for _, c := range g.calls {
			l.wake(c, nil, err)
		}
		return
	}
	var dec *zstd.Decoder
	sf, ok := l.fetch.(streamFetcher)
	if ok && g.fg.Load() {
		dec = l.store.streamDecoder(l.ix.ChunkSize)
	}
	switch {
	case dec != nil:
		raw := l.store.raws.get(int(g.end - g.off))
		l.runStreaming(ctx, g, sf, dec, raw)
		l.store.putStreamDecoder(l.ix.ChunkSize, dec)
		l.store.raws.put(raw)
	case ok:
		raw := l.store.raws.get(int(g.end - g.off))
		groupErr := l.fetchInto(ctx, g, sf, g.off, raw)
		l.verifyGroup(ctx, g, raw, groupErr)
		l.store.raws.put(raw)
	default:
		raw, groupErr := l.fetchRange(ctx, g, g.off, g.end-g.off, false)
		l.verifyGroup(ctx, g, raw, groupErr)
	}
	l.store.fetchMem.Release(weight)
}

// verifyGroup decodes and verifies the chunks of a group fetched whole
// into raw (or failed with groupErr), and wakes their waiters. A
// background group's chunks are also stored one by one as they verify, so
// it holds one decoded chunk at a time rather than all of them (a 4 MiB
// range is about forty 256 KiB chunks): ten images fetching in the
// background at once would otherwise hold over 100 MB of decoded chunks
// waiting for the disk. A foreground group's readers are all woken first;
// storeGroup writes its chunks after.
func (l *loader) verifyGroup(ctx context.Context, g *fetchGroup, raw []byte, groupErr error) {
	storeNow := !g.fg.Load()
	for _, c := range g.calls {
		switch {
		case groupErr != nil:
			l.wake(c, nil, groupErr)
		default:
			if err := l.decodeSlot(ctx, g, c); err != nil {
				l.wake(c, nil, err)
				break
			}
			ch := l.ix.Chunks[c.index]
			start := int64(ch.Offset) - g.off
			data, err := l.verified(ctx, g, c, raw[start:start+int64(ch.Length)])
			l.wake(c, data, err)
		}
		if storeNow {
			l.finish(l.base, c)
		}
	}
	g.stored = storeNow
}

// decodeSlot takes c's share of the store's decoded budget before c is
// decoded: the bytes of decoded chunks waiting for the disk stay bounded
// however many images fetch at once. When the budget is spent, g first
// stores the chunks it has woken (so a group waiting for the budget never
// holds any), then waits. The share is given back by finish.
func (l *loader) decodeSlot(ctx context.Context, g *fetchGroup, c *call) error {
	w := min(l.ix.ChunkLen(c.index), l.store.decodedBudget)
	if !l.store.decoded.TryAcquire(w) {
		l.store.decodedWaits.Add(1)
		l.flush(g)
		if err := l.store.decoded.Acquire(ctx, w); err != nil {
			return fmt.Errorf("waiting for decode memory: %w", err)
		}
	}
	c.slot = w
	return nil
}

// flush stores the chunks of g that have been woken and not yet stored.
// It runs on the goroutine fetching g, which later runs storeGroup.
func (l *loader) flush(g *fetchGroup) {
	for _, c := range g.calls {
		select {
		case <-c.done:
			if !c.finished {
				l.finish(l.base, c)
			}
		default:
			return // calls are woken in order: the rest are not yet
		}
	}
}

// runStreaming (foreground groups, while a stream decoder is free) decodes
// and hashes a group's chunks as their bytes arrive, pulling them from the
// range request on this goroutine, so that once the last byte is in, only
// the last block remains to decode: a fault is answered about a decode
// sooner. Chunks are woken in blob order as each verifies. A chunk whose
// bytes all came but do not verify goes through verified (one refetch of
// it alone, once this fetch has ended), as without streaming.
func (l *loader) runStreaming(ctx context.Context, g *fetchGroup, sf streamFetcher, dec *zstd.Decoder, raw []byte) {
	release, err := l.sched.acquire(ctx, &g.fg, g.yield)
	if err != nil {
		for _, c := range g.calls {
			l.wake(c, nil, fmt.Errorf("waiting to fetch: %w", err))
		}
		return
	}
	defer release()
	ctx, cancel := withTimeout(ctx, l.fetchTimeout)
	defer cancel()
	s, err := sf.stream(ctx, g.off, raw)
	if err != nil {
		for _, c := range g.calls {
			l.wake(c, nil, err)
		}
		return
	}
	defer s.close()
	// While the request is on its way (the round trip, the registry's
	// service time), another goroutine takes the first chunk's share of
	// the decoded budget, if it is free, and allocates its output buffer
	// with every page touched: a fresh buffer's page faults, paid on the
	// decoder's first write to each page, were about a third of a fault's
	// CPU on a paravirtualized machine, after the last byte was in. Then
	// the request is sent and its first bytes waited for; an error here
	// comes back from the first read of the first chunk.
	first := make(chan []byte, 1)
	go func() { first <- l.preallocate(g.calls[0]) }()
	_ = s.fill(1)
	firstOut := <-first
	// end finishes the fetch, counts it if it completed, and gives back
	// its slot; once only.
	ended := false
	end := func() {
		if ended {
			return
		}
		ended = true
		if s.fill(len(raw)) == nil {
			l.countFetch(&g.fg, int64(len(raw)))
		}
		s.close()
		release()
	}
	defer end()
	for k, c := range g.calls {
		ch := l.ix.Chunks[c.index]
		start := int64(ch.Offset) - g.off
		stop := start + int64(ch.Length)
		var out []byte
		if k == 0 {
			out = firstOut
		}
		if out == nil {
			if err := l.decodeSlot(ctx, g, c); err != nil {
				l.wake(c, nil, err)
				continue
			}
		}
		data, err := l.decodeStream(dec, c.index, s.section(start, stop), out)
		if err == nil {
			l.wake(c, data, nil)
			continue
		}
		if ferr := s.fill(int(stop)); ferr != nil {
			l.wake(c, nil, ferr) // the fetch failed before this chunk was in
			continue
		}
		end() // before refetching, which needs a slot of its own
		data, err = l.verified(ctx, g, c, raw[start:stop])
		l.wake(c, data, err)
	}
}

// fetchInto is fetchRange into dst, a buffer of the store's pool.
func (l *loader) fetchInto(ctx context.Context, g *fetchGroup, sf streamFetcher, off int64, dst []byte) error {
	release, err := l.sched.acquire(ctx, &g.fg, g.yield)
	if err != nil {
		return fmt.Errorf("waiting to fetch: %w", err)
	}
	defer release()
	ctx, cancel := withTimeout(ctx, l.fetchTimeout)
	defer cancel()
	s, err := sf.stream(ctx, off, dst)
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.fill(len(dst)); err != nil {
		return err
	}
	l.countFetch(&g.fg, int64(len(dst)))
	return nil
}

// countFetch counts a completed range fetch of n bytes.
func (l *loader) countFetch(fg *atomic.Bool, n int64) {
	l.stats.fetches.Add(1)
	l.stats.bytesFetched.Add(n)
	if !fg.Load() {
		l.stats.backgroundBytes.Add(n)
	}
}

// preallocate takes c's share of the decoded budget only if it is free
// now, and returns c's output buffer with each of its pages written
// (faulted in); nil when the budget is spent (decodeSlot then waits for
// it in turn).
func (l *loader) preallocate(c *call) []byte {
	w := min(l.ix.ChunkLen(c.index), l.store.decodedBudget)
	if !l.store.decoded.TryAcquire(w) {
		return nil
	}
	c.slot = w
	b := make([]byte, l.ix.ChunkLen(c.index))
	for i := 0; i < len(b); i += pageSize {
		b[i] = 0
	}
	return b
}

// pageSize is the granularity of the kernel's page faults that preallocate
// takes ahead of time (4 KiB, or a multiple of it: touching every 4 KiB
// costs nothing more on larger pages).
const pageSize = 4096

// decodeStream decodes chunk i from r as its bytes come, hashing as it
// goes, and checks length and digest like decode. The chunk is decoded
// into out, of the chunk's length, or a new buffer when out is nil.
func (l *loader) decodeStream(dec *zstd.Decoder, i int, r io.Reader, out []byte) ([]byte, error) {
	ch := &l.ix.Chunks[i]
	want := l.ix.ChunkLen(i)
	if err := dec.Reset(r); err != nil {
		return nil, fmt.Errorf("chunk %d (sha256:%x): %w: zstd: %v", i, ch.Digest, ErrChunkCorrupt, err)
	}
	data := out
	if int64(len(data)) != want {
		data = make([]byte, want)
	}
	h := sha256.New()
	for n := 0; n < len(data); {
		k, err := dec.Read(data[n:])
		h.Write(data[n : n+k])
		n += k
		if err != nil && n < len(data) {
			return nil, fmt.Errorf("chunk %d (sha256:%x): %w: %d bytes, want %d: %v", i, ch.Digest, ErrChunkCorrupt, n, want, err)
		}
	}
	// The frame must end here, its checksum (if any) checked.
	var one [1]byte
	if k, err := dec.Read(one[:]); k != 0 || err != io.EOF {
		return nil, fmt.Errorf("chunk %d (sha256:%x): %w: more than %d bytes, or a bad frame end: %v", i, ch.Digest, ErrChunkCorrupt, want, err)
	}
	if [32]byte(h.Sum(nil)) != ch.Digest {
		return nil, fmt.Errorf("chunk %d (sha256:%x): %w", i, ch.Digest, ErrChunkCorrupt)
	}
	return data, nil
}

// fetchRange waits for a slot at g's priority, then fetches with the fetch
// timeout (which starts once the slot is had); registryOnly asks the
// registry itself, past any mirror, when the fetcher can.
func (l *loader) fetchRange(ctx context.Context, g *fetchGroup, off, n int64, registryOnly bool) ([]byte, error) {
	release, err := l.sched.acquire(ctx, &g.fg, g.yield)
	if err != nil {
		return nil, fmt.Errorf("waiting to fetch: %w", err)
	}
	defer release()
	ctx, cancel := withTimeout(ctx, l.fetchTimeout)
	defer cancel()
	fetch := l.fetch.FetchRange
	if rf, ok := l.fetch.(registryFetcher); ok && registryOnly {
		fetch = rf.FetchRangeFromRegistry
	}
	b, err := fetch(ctx, off, n)
	if err != nil {
		return nil, err
	}
	l.countFetch(&g.fg, n)
	return b, nil
}

// verified decodes and checks a chunk of g; bytes that fail are fetched
// once more on their own before the chunk is declared corrupt.
func (l *loader) verified(ctx context.Context, g *fetchGroup, c *call, comp []byte) ([]byte, error) {
	ch := l.ix.Chunks[c.index]
	data, err := l.decode(c.index, comp)
	if err == nil {
		return data, nil
	}
	l.stats.corrupt.Add(1)
	// The refetch waits for a fetch slot, which a fetch waiting for the
	// decoded budget may hold: give back what this group holds first.
	l.flush(g)
	zerolog.Ctx(ctx).Warn().Err(err).Int("chunk", c.index).Msg("refetching a chunk that failed verification, from the registry itself")
	comp, err = l.fetchRange(ctx, g, int64(ch.Offset), int64(ch.Length), true)
	if err != nil {
		return nil, err
	}
	if data, err = l.decode(c.index, comp); err != nil {
		l.stats.corrupt.Add(1)
		return nil, err
	}
	return data, nil
}

func (l *loader) decode(i int, comp []byte) ([]byte, error) {
	ch := &l.ix.Chunks[i]
	want := l.ix.ChunkLen(i)
	data, err := l.dec.DecodeAll(comp, make([]byte, 0, want))
	switch {
	case err != nil:
		return nil, fmt.Errorf("chunk %d (sha256:%x): %w: zstd: %v", i, ch.Digest, ErrChunkCorrupt, err)
	case int64(len(data)) != want:
		return nil, fmt.Errorf("chunk %d (sha256:%x): %w: %d bytes, want %d", i, ch.Digest, ErrChunkCorrupt, len(data), want)
	case sha256.Sum256(data) != ch.Digest:
		return nil, fmt.Errorf("chunk %d (sha256:%x): %w", i, ch.Digest, ErrChunkCorrupt)
	}
	return data, nil
}

// wake hands a chunk's verified bytes (or its error) to its waiters, before
// the chunk file is written: a fault is answered as soon as the bytes are
// known good. The call stays in inflight until finish, so a reader that
// comes meanwhile joins it instead of fetching again.
// A foreground chunk goes to the store's memory first, where readers of
// other images on the same store find it too.
// A failed call leaves inflight at once, so a later read fetches anew
// rather than joining the failure.
func (l *loader) wake(c *call, data []byte, err error) {
	d := l.ix.Chunks[c.index].Digest
	if err == nil && c.fg.Load() {
		l.store.hot.put(d, data)
	}
	if err == nil {
		raise(&l.unstoredPeak, l.unstored.Add(int64(len(data))))
		raise(&l.store.unstoredPeak, l.store.unstored.Add(int64(len(data))))
	}
	if err != nil {
		l.releaseSlot(c)
		l.forget(d, c)
	}
	c.data, c.err = data, err
	close(c.done)
}

// forget removes c from inflight, unless another call has replaced it.
func (l *loader) forget(d [32]byte, c *call) {
	l.mu.Lock()
	if l.inflight[d] == c {
		delete(l.inflight, d)
	}
	l.mu.Unlock()
}

// finish stores a woken call's verified chunk, then forgets the call. The
// store is written before the call leaves inflight, so a reader never
// misses both.
func (l *loader) finish(ctx context.Context, c *call) {
	c.finished = true
	d := l.ix.Chunks[c.index].Digest
	if c.err == nil {
		if perr := l.store.put(ctx, d, c.data, c.fg.Load()); perr != nil {
			zerolog.Ctx(ctx).Debug().Err(perr).Int("chunk", c.index).Msg("chunk served but not cached")
		}
		l.unstored.Add(-int64(len(c.data)))
		l.store.unstored.Add(-int64(len(c.data)))
		l.releaseSlot(c)
	}
	l.forget(d, c)
	close(c.stored)
}

// releaseSlot gives back c's share of the decoded budget, once.
func (l *loader) releaseSlot(c *call) {
	if c.slot > 0 {
		l.store.decoded.Release(c.slot)
		c.slot = 0
	}
}

// raise sets *peak to n if n is higher.
func raise(peak *atomic.Int64, n int64) {
	for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
	}
}

// close waits for fetches in flight and stops new ones.
func (l *loader) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.wg.Wait()
}
