package source

import (
	"context"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// FetchLayer returns the blob of one of image's layers, as stored in its
// repository (usually compressed).
func (s *Source) FetchLayer(ctx context.Context, image, layerDigest string) (io.ReadCloser, error) {
	ref, err := s.parse(image)
	if err != nil {
		return nil, err
	}
	l, err := remote.Layer(ref.Context().Digest(layerDigest), remote.WithContext(ctx),
		remote.WithAuthFromKeychain(s.keychain(image)), remote.WithUserAgent("sluice"))
	if err != nil {
		return nil, fmt.Errorf("layer %s of %s: %w", layerDigest, image, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("layer %s of %s from registry %s: %w", layerDigest, image, ref.Context().RegistryStr(), err)
	}
	return rc, nil
}
