// Package snapshot is sluice's containerd snapshotter: a complete overlayfs
// snapshotter (containerd's metadata store, the overlay snapshotter's
// semantics) that, for images with a sluice artifact, skips every layer
// download and gives containers the image's flattened ext4 filesystem,
// attached as a read-only block device, as the lower layer of their overlay.
//
// Terms:
//
//   - export: an NBD export on a unix socket (Export) serving one flattened
//     ext4 image read-only. A Source (implemented by the agent with
//     blockcache/source and nbdserver) opens it for an image: a Stream.
//   - device: a block device attached to an export by an Attacher (Device):
//     KernelAttacher's /dev/nbdN (the kernel nbd driver, over generic
//     netlink, its sockets served in-process by an ExportServer), or
//     PortableAttacher's nbdfuse + loop device. NewAttacher chooses.
//   - image mount: the ext4 filesystem of one device, mounted read-only at
//     ROOT/images/KEY/mnt, where KEY is the stream's key (the artifact
//     digest). There is one device and one image mount per image, however
//     many containers use it; it lives as long as a placeholder needs it.
//   - placeholder: a committed snapshot, named by a layer's chain ID, that
//     stands for that layer of a streamed image without holding its files
//     (its fs directory is empty). The placeholder of the image's top layer
//     is an image placeholder: its whole root filesystem is the image mount.
//     The others are layer placeholders.
//   - materialize: fill a layer placeholder's fs directory with the real
//     layer (Source.FetchLayer, applied like containerd applies a diff), so
//     that it becomes an ordinary snapshot.
//
// # The remote path
//
// containerd's unpacker prepares an image's layers bottom-up, each with
// the labels containerd.io/snapshot.ref (the chain ID to commit) and
// containerd.io/snapshot/cri.{image-ref,manifest-digest,layer-digest,
// image-layers}. Prepare resolves the image through the Source; if it is
// streamable it makes sure the image mount exists (attach, mount ext4 -o
// ro), commits a placeholder under the chain ID and answers
// errdefs.ErrAlreadyExists, so containerd downloads no layer. A layer is the
// top one when cri.image-layers (the layers from this one up, possibly
// truncated, never below one entry) names only itself. A container's
// snapshot whose parent chain reaches an image placeholder gets overlayfs
// with lowerdir = (ordinary layers above it...,) the image mount; what lies
// below the image placeholder is not used, because the image mount already
// holds it. An unpack without the CRI labels (ctr pull, or CRI with
// disable_snapshot_annotations) cannot be streamed: "incomplete labels".
//
// When the image has no usable artifact (ErrNotStreamable, or any failure
// to resolve, attach or mount it), Policy decides: PolicyFallback prepares
// the layer as an ordinary snapshot (containerd downloads and applies it),
// logged and counted once per image with the reason; PolicyRequire fails
// the pull with an error naming the image and the reason.
//
// # Shared base layers
//
// Chain IDs are shared between images, and a layer placeholder has no files
// of its own: the flattened image has no per-layer content. When an
// ordinary snapshot or a view is prepared on a chain that holds layer
// placeholders below its first image placeholder (another image sharing the
// base but not streamed, or a container run on an intermediate snapshot),
// those placeholders are materialized first, bottom-up, each under a lock
// of its own: the layer blob is fetched from the streamed image's
// repository (Source.FetchLayer, digest verified), decompressed, and applied
// with overlay whiteouts into a temporary directory that then replaces the
// empty fs directory; a label records it. A materialized placeholder is an
// ordinary snapshot from then on. An image placeholder needs no such step,
// whatever is built on it: its root filesystem is complete. Containerd
// cannot be made to download a layer it believes it has, so the snapshotter
// has to fetch it itself; doing it only when a placeholder is actually used
// as a parent keeps streamed pulls free of layer downloads.
//
// # Restart recovery
//
// Close keeps devices and image mounts: running containers keep their root
// filesystems. Each image mount has a state file (ROOT/images/KEY/state.json:
// image, device id, attacher); each attacher keeps its own per-device state
// (PortableAttacher: a JSON file per device with its loop device and
// export). New reads both. An image mount that is still mounted and still
// used by a placeholder is adopted: Attacher.Adopt points its device at the
// export the new process serves, without touching the mount (so nothing is
// mounted twice), and checks that it reads. A device that cannot be adopted
// (it no longer reads) has its mount detached lazily, so that containers
// using it keep it, and a new image mount serves new containers; the old
// device is detached by Cleanup once its users are gone. An image mount no
// placeholder uses is unmounted and its device detached; a device no image
// mount claims is detached. Images whose mount is gone are mounted again on
// first use.
//
// Both attachers survive the agent's restart without any reads failing.
// The kernel attacher's devices wait, up to their dead-connection timeout,
// for the new agent to give them new sockets (RECONFIGURE); a device whose
// reads already failed because the agent was away longer is not adopted
// (ErrDeviceDead), so its image mount is replaced as above. The portable
// attacher's nbdfuse reaches the export through a relay (nbdkit's nbd
// plugin behind its retry filter) that reconnects and retries while the
// agent is away; see KernelAttacher and PortableAttacher.
//
// Files: attach.go (Attacher, Export, Device, SelectAttacher),
// attach_select.go (NewAttacher), attach_kernel.go (KernelAttacher,
// Attach), attach_kernel_devices.go (Detach, Devices, Adopt, STATUS),
// attach_kernel_serve.go (its sockets), attach_kernel_netlink.go (the nbd
// generic netlink interface), attach_kernel_module.go (Available, modprobe),
// attach_portable.go (PortableAttacher) and attach_portable_proc.go (its
// processes), source.go (Source, Stream, ErrNotStreamable), policy.go,
// snapshotter.go (New and the metadata-only methods), create.go (Prepare,
// View, Mounts), remote.go (the remote Prepare), chain.go (lower
// directories of a snapshot), materialize.go, images.go (image mounts),
// recover.go, stats.go, labels.go, options.go, keyedmutex.go, mounts.go
// (mountinfo helpers).
package snapshot
