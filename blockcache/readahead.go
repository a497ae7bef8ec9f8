package blockcache

import "sync"

// streams tracks the sequential streams of faults of one image, so that a
// fault continuing one (an interpreter importing file after file, a file
// read from start to end) fetches ahead of it in one range request rather
// than a round trip per chunk. A stream is the chunks its latest fetch
// covered, the faulting ones and those fetched ahead; a fault that starts
// where that fetch ended continues it and doubles its window, from the
// faulting chunks up to the readahead bound. Any other fault starts a new
// stream, replacing the least recently used of a few, and fetches only its
// own chunks: random faults cost what they cost without readahead.
//
// Only faults take the lock: reads served from the store never do.
type streams struct {
	max  int64 // bytes of image a stream's fetch covers at most; 0: off
	mu   sync.Mutex
	tick uint64
	s    [streamSlots]stream
}

// streamSlots is how many streams an image follows at once: a few
// processes reading files side by side.
const streamSlots = 4

type stream struct {
	lo, next int    // its latest fetch covered chunks [lo, next)
	window   int64  // the image bytes that fetch covered
	used     uint64 // the tick of its latest fault; 0: a free slot
}

// plan returns the chunks to fetch ahead of a fault of chunks first..last
// (nil for a fault that continues no stream), and notes the fault. The
// chunks ahead are consecutive in the image from last+1, covering with the
// fault at most the stream's window of image bytes, and their compressed
// bytes at most maxRange with those of the faulting chunks; the loader
// fetches them up to the first one that is cached, in flight or not next
// in the data blob.
func (im *Image) plan(first, last int) []int {
	st := im.streams
	if st == nil || st.max <= 0 {
		return nil
	}
	cs := im.ix.ChunkSize
	st.mu.Lock()
	defer st.mu.Unlock()
	st.tick++
	var s *stream
	for k := range st.s {
		c := &st.s[k]
		if c.used == 0 {
			continue
		}
		// A fault past the stream's end continues it when all it skipped
		// is at hand (chunks shared with an image run before, metadata
		// fetched first), within a window: the reads in between did not
		// fault.
		if c.lo <= first && (first <= c.next || int64(first-c.next) <= c.window/cs && im.present(c.next, first)) {
			s = c
			break
		}
	}
	fault := int64(last-first+1) * cs
	if s == nil {
		s = &st.s[0]
		for k := range st.s {
			if st.s[k].used < s.used {
				s = &st.s[k]
			}
		}
		*s = stream{lo: first, next: last + 1, window: fault, used: st.tick}
		if int(im.loader.aheadGroups.Load()) >= im.loader.aheadLimit() {
			return nil
		}
		ahead, covered := im.faultAround(first, last)
		s.next += len(ahead)
		s.window += covered
		return ahead
	}
	s.used = st.tick
	if last < s.next {
		// A chunk the stream's latest fetch covers and has not yet
		// delivered: the read joins that fetch.
		return nil
	}
	if int(im.loader.aheadGroups.Load()) >= im.loader.aheadLimit() {
		// No fetch slot to spare for readahead: the stream goes on, its
		// window kept for the next fault.
		s.lo, s.next = first, last+1
		return nil
	}
	window := min(max(2*s.window, fault), max(st.max, fault))
	var comp int64
	for i := first; i <= last; i++ {
		comp += int64(im.ix.Chunks[i].Length)
	}
	var ahead []int
	covered := fault
	for i := last + 1; i < len(im.ix.Chunks) && covered+im.ix.ChunkLen(i) <= window; i++ {
		c := im.ix.Chunks[i]
		if comp+int64(c.Length) > im.cfg.maxRange {
			break
		}
		comp += int64(c.Length)
		covered += im.ix.ChunkLen(i)
		ahead = append(ahead, i)
	}
	*s = stream{lo: first, next: last + 1 + len(ahead), window: window, used: st.tick}
	return ahead
}

// cut ends the latest fetch of the stream whose fault began at chunk
// first at chunk next, when fewer chunks were fetched ahead than planned
// (some cached, in flight or elsewhere in the data blob): the fault at
// next continues the stream.
func (st *streams) cut(first, next int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for k := range st.s {
		if s := &st.s[k]; s.used != 0 && s.lo == first && s.next > next {
			s.next = next
		}
	}
}

// present says whether chunks [from, to) are all zero or in the store.
func (im *Image) present(from, to int) bool {
	for i := from; i < to; i++ {
		if c := im.ix.Chunks[i]; !c.Zero() && !im.store.Has(c.Digest) {
			return false
		}
	}
	return true
}

// faultAround returns the chunks after a fault of chunks first..last that
// continues no stream to fetch with it (see WithFaultAround), and the
// image bytes they cover.
func (im *Image) faultAround(first, last int) (ahead []int, covered int64) {
	if im.link == nil {
		return nil, 0
	}
	rate, rtt, ok := im.link()
	if !ok {
		return nil, 0
	}
	budget := int64(im.cfg.faultAround * rate * rtt.Seconds())
	var comp int64
	for i := first; i <= last; i++ {
		comp += int64(im.ix.Chunks[i].Length)
	}
	budget = min(budget, im.cfg.maxRange-comp)
	window := im.streams.max - int64(last-first+1)*im.ix.ChunkSize
	for i := last + 1; i < len(im.ix.Chunks); i++ {
		c := im.ix.Chunks[i]
		n := im.ix.ChunkLen(i)
		if int64(c.Length) > budget || n > window {
			break
		}
		budget -= int64(c.Length)
		window -= n
		covered += n
		ahead = append(ahead, i)
	}
	return ahead, covered
}
