// Package convert holds the end-to-end tests of image conversion: images
// are built layer by layer, pushed to an in-process registry, converted and
// exported by imageconv, loop-mounted, and compared entry by entry with the
// rootfs containerd's own applier extracts from the same layers.
//
// The tests need root and loop devices; they skip, saying why, without them.
package convert
