package snapshot

import (
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
)

// Labels containerd passes on an unpack Prepare.
const (
	labelTargetRef      = "containerd.io/snapshot.ref"
	labelImageRef       = "containerd.io/snapshot/cri.image-ref"
	labelManifestDigest = "containerd.io/snapshot/cri.manifest-digest"
	labelLayerDigest    = "containerd.io/snapshot/cri.layer-digest"
	labelImageLayers    = "containerd.io/snapshot/cri.image-layers"
)

// Labels sluice keeps on placeholders. The containerd.io/snapshot/ prefix
// is the one containerd passes through to a snapshotter; Update keeps them.
const (
	labelPrefix = "containerd.io/snapshot/sluice."
	// labelPlaceholder is placeholderImage or placeholderLayer.
	labelPlaceholder  = labelPrefix + "placeholder"
	labelImageKey     = labelPrefix + "image-key"
	labelRef          = labelPrefix + "image-ref"
	labelManifest     = labelPrefix + "manifest-digest"
	labelLayer        = labelPrefix + "layer-digest"
	labelMaterialized = labelPrefix + "materialized"

	placeholderImage = "image"
	placeholderLayer = "layer"
)

// placeholder is what a placeholder's labels say.
type placeholder struct {
	image        bool // the image's top layer: the image mount is its rootfs
	key          string
	img          ImageRef
	layer        string
	materialized bool
}

// placeholderOf parses info's labels; ok is false for ordinary snapshots.
func placeholderOf(labels map[string]string) (p placeholder, ok bool) {
	kind, ok := labels[labelPlaceholder]
	if !ok {
		return p, false
	}
	return placeholder{
		image:        kind == placeholderImage,
		key:          labels[labelImageKey],
		img:          ImageRef{Ref: labels[labelRef], ManifestDigest: labels[labelManifest]},
		layer:        labels[labelLayer],
		materialized: labels[labelMaterialized] == "true",
	}, true
}

func (p placeholder) labels() map[string]string {
	kind := placeholderLayer
	if p.image {
		kind = placeholderImage
	}
	return map[string]string{
		labelPlaceholder: kind,
		labelImageKey:    p.key,
		labelRef:         p.img.Ref,
		labelManifest:    p.img.ManifestDigest,
		labelLayer:       p.layer,
	}
}

// unpackTarget is what an unpack Prepare's labels say about the layer.
type unpackTarget struct {
	name  string // the chain ID to commit
	img   ImageRef
	layer string
	top   bool
}

// unpackTargetOf returns ok false when labels carry no snapshot.ref (not an
// unpack), and a non-empty missing when the image labels are incomplete.
func unpackTargetOf(labels map[string]string) (t unpackTarget, ok bool, missing string) {
	t.name, ok = labels[labelTargetRef]
	if !ok {
		return t, false, ""
	}
	t.img = ImageRef{Ref: labels[labelImageRef], ManifestDigest: labels[labelManifestDigest]}
	t.layer = labels[labelLayerDigest]
	layers := labels[labelImageLayers]
	switch {
	case t.img.Ref == "":
		return t, true, labelImageRef
	case t.img.ManifestDigest == "":
		return t, true, labelManifestDigest
	case t.layer == "":
		return t, true, labelLayerDigest
	}
	// The list runs from this layer up and may be truncated, but never
	// below this layer's own entry; missing, the layer is taken as a lower
	// one, which is always correct (only slower when used as a parent).
	t.top = layers != "" && !strings.Contains(layers, ",") && layers == t.layer
	return t, true, ""
}

// keepInternalLabels puts sluice's labels of old back into updated, so that
// an Update replacing all labels cannot turn a placeholder into an empty
// ordinary snapshot.
func keepInternalLabels(old, updated snapshots.Info) snapshots.Info {
	for k, v := range old.Labels {
		if strings.HasPrefix(k, labelPrefix) {
			if updated.Labels == nil {
				updated.Labels = map[string]string{}
			}
			updated.Labels[k] = v
		}
	}
	for k := range updated.Labels {
		if _, had := old.Labels[k]; strings.HasPrefix(k, labelPrefix) && !had {
			delete(updated.Labels, k)
		}
	}
	return updated
}
