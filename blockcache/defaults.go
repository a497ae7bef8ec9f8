package blockcache

import "time"

// Defaults, in one place: the options of Open and OpenStore default to
// them, and the commands' flags and the agent's config take them as their
// defaults too.
const (
	// DefaultStoreDir is where a node keeps its chunk store.
	DefaultStoreDir = "/var/cache/sluice/chunks"
	// DefaultStoreSize is a sensible bound of a node's chunk store.
	DefaultStoreSize = 10 << 30
	// DefaultHotBytes is the store's in-memory layer (WithHotBytes): warm
	// reads are served from the chunk files either way.
	DefaultHotBytes = 8 << 20
	// DefaultDecodedBudget bounds the decoded chunks waiting to be
	// written to disk, over all images (WithDecodedBudget).
	DefaultDecodedBudget = 16 << 20
	// DefaultReadTimeout bounds each read (WithReadTimeout).
	DefaultReadTimeout = 30 * time.Second
	// DefaultConcurrency bounds range requests in flight per image
	// (WithConcurrency).
	DefaultConcurrency = 4
	// DefaultMaxRange bounds one coalesced range request (WithMaxRange).
	DefaultMaxRange = 4 << 20
	// DefaultBackgroundRate is the pace of background fetch, in bytes of
	// compressed data per second (WithBackgroundRate).
	DefaultBackgroundRate = 50 << 20
	// DefaultBackgroundQuiet is how long reads must have stopped faulting
	// before the background fetch of every chunk starts a range request
	// (WithBackgroundQuiet). Off by default: with a 1 s window, busybox
	// through sluiced and CRI took 2.17 s from pull to its ready line
	// against 0.42 s without (bench/startup, 1 Gbit/s 2 ms, and 2.48 s
	// against 0.62 s at 100 Mbit/s 20 ms), a delay that does not depend
	// on the link and whose cause is not found yet; reads through
	// blockcache alone show none.
	DefaultBackgroundQuiet time.Duration = 0
	// DefaultReadahead bounds the image bytes one fetch of a sequential
	// stream of faults covers (WithReadahead), reached by doubling from
	// the faulting chunk: at the default 256 KiB chunks, the fifth fault
	// of a stream fetches 4 MiB, and a 40 MiB file read from start to end
	// costs 14 range requests instead of 160. It is DefaultMaxRange, the
	// largest range request sluice makes.
	DefaultReadahead = DefaultMaxRange
)
