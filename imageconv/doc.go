// Package imageconv turns an OCI image into a streamable sluice artifact
// (the converter), and reassembles an artifact into its ext4 image
// (Export). The artifact format itself, which the node side reads too,
// is package artifact.
//
// Terms used throughout sluice:
//
//   - image: a standard OCI or Docker image (a manifest, a config and layers);
//     it is never modified.
//   - flattened image: one ext4 filesystem holding the image's merged rootfs,
//     written deterministically so the same image always gives the same bytes.
//   - block: a 4 KiB unit of the flattened image, the unit the kernel reads.
//   - chunk: a fixed-size, power-of-two run of blocks, the unit fetched from
//     the registry, verified and cached; addressed by the sha256 of its
//     uncompressed bytes. All-zero chunks are not stored.
//   - index blob: the geometry and the chunk table (see artifact/FORMAT.md).
//   - data blob: the zstd-compressed chunks, back to back.
//   - artifact: an OCI manifest whose layers are the index and data blobs and
//     whose subject is the source image's manifest, found through the
//     referrers API.
//
// Convert does the whole job; Flatten and ChunkImage are usable on their
// own.
package imageconv
