package artifact

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Push uploads the artifact m into repo: its config, index and data blobs
// first, then the manifest, so a reader never sees a manifest whose blobs
// are missing. openData opens the data blob, m.Data (it may count the bytes
// read for a progress bar).
func Push(ctx context.Context, repo name.Repository, m *Manifest, openData func() (io.ReadCloser, error), opts ...Option) error {
	ropts := RemoteOptions(ctx, opts...)
	blobs := []*blob{
		{desc: emptyConfig, open: bytesOpener(emptyJSON)},
		{desc: m.IndexDesc, open: bytesOpener(m.Index)},
		{desc: m.Data, open: openData},
	}
	for _, bl := range blobs {
		if err := remote.WriteLayer(repo, bl, ropts...); err != nil {
			return fmt.Errorf("pushing blob %s to %s: %w", bl.desc.Digest, repo, err)
		}
	}
	if err := remote.Put(repo.Digest(m.Digest.String()), rawManifest{m.Raw}, ropts...); err != nil {
		return fmt.Errorf("pushing artifact manifest to %s: %w", repo, err)
	}
	return nil
}

func bytesOpener(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

// blob is a v1.Layer over an opener, for remote.WriteLayer.
type blob struct {
	desc v1.Descriptor
	open func() (io.ReadCloser, error)
}

func (b *blob) Digest() (v1.Hash, error)             { return b.desc.Digest, nil }
func (b *blob) DiffID() (v1.Hash, error)             { return b.desc.Digest, nil }
func (b *blob) Size() (int64, error)                 { return b.desc.Size, nil }
func (b *blob) MediaType() (types.MediaType, error)  { return b.desc.MediaType, nil }
func (b *blob) Uncompressed() (io.ReadCloser, error) { return b.open() }
func (b *blob) Compressed() (io.ReadCloser, error)   { return b.open() }

type rawManifest struct{ raw []byte }

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
