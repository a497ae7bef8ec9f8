// Package source opens streamable images by reference, for every process
// that serves them (the node agent sluiced and sluice serve): it finds the
// image's artifact in its registry (package artifact), opens the flattened
// image on the shared chunk store (package blockcache), and publishes it
// through an Exporter (an NBD server) while anyone uses it.
//
//   - An open image is shared: requests for the same export share one
//     blockcache.Image, counted; the last Close withdraws the export and
//     closes the image.
//   - Saved artifacts: with WithSaveDir, what the registry said about each
//     served image (its artifact and index) is kept on disk while the
//     image is served, so that a process restarted while the registry is
//     down still serves the images it adopts, from the chunks in the cache.
//   - Failures are typed: artifact.ErrNoArtifact, artifact.ErrBadIndex,
//     artifact.ErrRegistryUnreachable, artifact.ErrRegistryDenied,
//     ErrBadReference; Reason turns them into stable short labels for
//     metrics.
package source
