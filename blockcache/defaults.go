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
	// (WithBackgroundQuiet). A starting container's faults come in bursts
	// separated by its own work, mostly well under a second apart; a
	// background range of DefaultMaxRange (4 MiB) holds a 100 Mbit/s link
	// for about a third of a second, which a fault arriving behind it
	// waits out. Measured (bench/startup, 1 Gbit/s 2 ms, two runs each):
	// python3 ready in 1.69 and 1.62 s with 1 s against 1.69 and 1.59 s
	// with 0, 15.1 MB fetched before ready against 38.5 MB; busybox 0.40
	// and 0.43 s against 0.51 and 0.48 s.
	DefaultBackgroundQuiet = time.Second
	// DefaultReadahead bounds the image bytes one fetch of a sequential
	// stream of faults covers (WithReadahead), reached by doubling from
	// the faulting chunk: at the default 256 KiB chunks, the fifth fault
	// of a stream fetches 4 MiB, and a 40 MiB file read from start to end
	// costs 14 range requests instead of 160. It is DefaultMaxRange, the
	// largest range request sluice makes.
	DefaultReadahead = DefaultMaxRange
	// DefaultFaultAround is how many round trips' worth of the link a
	// fault that continues no stream fetches after its own chunks
	// (WithFaultAround). Measured (bench/startup, python3 + numpy +
	// scipy, 100 Mbit/s 20 ms, background fetch off, 256 KiB chunks;
	// fixed counts of chunks after each such fault, before this was sized
	// by the link): none 7.3-7.6 s to ready, 157 requests, 30.4 MiB
	// fetched; 1 chunk 7.0-7.2 s, 137, 31.8 MiB; 3 chunks 6.0-6.5 s, 95,
	// 34.7 MiB; 7 chunks 4.7 s, 69, 39.5 MiB; 15 chunks 5.4-5.5 s, 63,
	// 48.3 MiB. 7 chunks there are about 1 MB compressed, 4 round trips of
	// that link (12.5 MB/s x 20 ms = 250 KB each); 4 is what to set.
	//
	// Off by default for now: it fetches around every fault, random ones
	// too, where the chunks around are seldom read, and bench/fio's
	// cold-bytes target (random blocks over a 1 GiB image) counts those
	// bytes (not measured with it on yet). It is to turn on once it
	// follows whether the chunks it brought were read (as the kernel's
	// readahead does) and stops where they are not.
	DefaultFaultAround = 0.0
)
