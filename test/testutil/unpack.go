package testutil

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
)

// LabelSnapshotRef is the label containerd's unpacker puts on a layer's
// Prepare and Commit: the chain ID the layer is committed as.
const LabelSnapshotRef = "containerd.io/snapshot.ref"

// UnpackImage is what containerd knows of an image when it unpacks it.
type UnpackImage struct {
	Ref      string   // host/repo:tag
	Manifest string   // platform manifest digest
	Layers   []string // layer digests, bottom first
	Chain    []string // chain IDs, bottom first
	Blobs    [][]byte // gzipped layer tars, bottom first
}

// Labels are the labels a CRI unpack gives layer i's Prepare.
func (img UnpackImage) Labels(i int) map[string]string {
	return map[string]string{
		LabelSnapshotRef:                       img.Chain[i],
		snapshotters.TargetRefLabel:            img.Ref,
		snapshotters.TargetManifestDigestLabel: img.Manifest,
		snapshotters.TargetLayerDigestLabel:    img.Layers[i],
		snapshotters.TargetImageLayersLabel:    strings.Join(img.Layers[i:], ","),
	}
}

// Unpack does what containerd's unpacker does with an image's layers under
// CRI: skip layers whose chain ID exists, Prepare with the CRI labels, on
// ErrAlreadyExists go on, else apply the layer and commit it. It returns
// how many layers were applied (downloaded).
func Unpack(ctx context.Context, sn snapshots.Snapshotter, img UnpackImage) (applied int, err error) {
	parent := ""
	for i, chain := range img.Chain {
		if _, err := sn.Stat(ctx, chain); err == nil {
			parent = chain
			continue
		}
		key := fmt.Sprintf("extract-%d-%s", i, chain)
		mounts, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(img.Labels(i)))
		if errdefs.IsAlreadyExists(err) {
			parent = chain
			continue
		}
		if err != nil {
			return applied, fmt.Errorf("layer %d: %w", i, err)
		}
		if err := mount.WithTempMount(ctx, mounts, func(root string) error {
			gz, err := gzip.NewReader(bytes.NewReader(img.Blobs[i]))
			if err != nil {
				return err
			}
			_, err = archive.Apply(ctx, root, gz)
			return err
		}); err != nil {
			return applied, fmt.Errorf("apply layer %d: %w", i, err)
		}
		if err := sn.Commit(ctx, chain, key, snapshots.WithLabels(map[string]string{LabelSnapshotRef: chain})); err != nil {
			return applied, fmt.Errorf("commit layer %d: %w", i, err)
		}
		applied++
		parent = chain
	}
	return applied, nil
}
