// Package blockcache is sluice's data path: it serves the flattened ext4
// image of a sluice artifact as an io.ReaderAt, fetching chunks of the data
// blob from the registry on demand, verifying them, and keeping them in a
// local content-addressed cache. It knows nothing of NBD: an *Image is a
// backend (io.ReaderAt plus Size) that a block-device server reads from.
//
// Terms (see also package artifact, imageconv/artifact):
//
//   - image: here, the flattened ext4 image an artifact describes; an *Image
//     serves its bytes.
//   - chunk: a fixed-size run of the image, the unit fetched, verified and
//     cached, addressed by the sha256 of its uncompressed bytes. Zero chunks
//     (all zeros) are never fetched or stored.
//   - data blob: the artifact's blob holding the zstd-compressed chunks back
//     to back; a range is a byte range of it, fetched with one HTTP request.
//   - store: the on-disk cache of uncompressed chunks, shared by all images
//     (identical chunks of different images are stored once), bounded in
//     bytes, evicting least recently used chunks that no reader holds.
//   - fault: a read that needs at least one chunk the store does not have.
//   - foreground: fetches a read waits for; background: prefetch of the
//     filesystem's metadata, of a profile's chunks and then of the rest of
//     the image, which always
//     yields to foreground fetches; the rest of the image also yields the
//     registry link: none of its range requests starts until reads have
//     stopped faulting for a quiet window (WithBackgroundQuiet).
//   - profile: the chunks a recorded start read, in order (see artifact.Profile).
//   - stream: faults each starting where the fetch of the one before ended
//     (a file read from start to end); readahead fetches ahead of it, in
//     growing ranges (WithReadahead).
//
// The layers, one per file, each adding one thing:
//
//	fetch.go     RangeFetcher: ranged GETs of the data blob (auth, redirects,
//	             Range ignored, stalls); retry.go its backoff policy
//	chunks.go    loader: coalescing of adjacent misses, one fetch per chunk in
//	             flight, zstd decode, sha256 verify before anything uses it;
//	             sched.go gives foreground fetches priority
//	store.go     Store: the content-addressed, crash-safe, bounded disk cache;
//	             store_lru.go its reads, writes and eviction, hot.go its
//	             in-memory layer
//	image.go     Image: io.ReaderAt over the loader, per-read deadline;
//	             readahead.go follows sequential streams of faults and
//	             fetches ahead of them
//	prefetch.go  filesystem metadata first (metadata.go, found from the
//	             ext4 superblock and group descriptors, ext4meta.go), then
//	             the profile, then everything at a bounded rate
//	             (ratelimit.go); recorder.go notes the order reads touch
//	             chunks (the profile format is package artifact's)
//	stats.go     per-image counters and the fault latency histogram
//	defaults.go  the defaults the commands and the agent config share
//
// Package source (blockcache/source) opens images by reference on top of
// this, for sluice serve and the agent.
package blockcache
