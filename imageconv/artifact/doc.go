// Package artifact is the sluice artifact format, shared by the converter
// that writes artifacts (imageconv) and the node side that reads them
// (blockcache, the agent, sluice serve). It holds the types and their
// codecs (Index, Profile, the media types and the manifest layout) and the
// registry operations on them (Push, Lookup), as go-containerregistry's
// pkg/v1 holds image types and pkg/v1/remote their operations. It does not
// know how a flattened image is made: the ext4 writer stays in imageconv.
//
// Terms:
//
//   - image: a standard OCI or Docker image; never modified.
//   - flattened image: one ext4 filesystem holding the image's merged rootfs.
//   - chunk: a fixed-size, power-of-two run of 4 KiB blocks of the flattened
//     image, the unit fetched, verified and cached; addressed by the sha256
//     of its uncompressed bytes. All-zero chunks are not stored.
//   - index blob: the geometry and the chunk table (Index).
//   - data blob: the zstd-compressed chunks, back to back.
//   - profile blob: chunks in the order a recorded start read them (Profile).
//   - artifact: an OCI manifest whose layers are those blobs and whose
//     subject is the source image's manifest, found through the referrers
//     API (Artifact, Lookup).
//
// FORMAT.md specifies the format byte by byte.
package artifact
