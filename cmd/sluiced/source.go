package main

import (
	"context"
	"io"

	"github.com/sluice-project/sluice/blockcache/source"
	"github.com/sluice-project/sluice/snapshot"
)

// streams is the snapshotter's Source: images opened by source.Source and
// served on the agent's NBD socket, named by artifact digest.
type streams struct {
	src    *source.Source
	socket string
}

var _ snapshot.Source = streams{}

func (s streams) Resolve(ctx context.Context, img snapshot.ImageRef) (snapshot.Stream, error) {
	h, err := s.src.Open(ctx, source.Request{Image: img.Ref, ManifestDigest: img.ManifestDigest})
	if err != nil {
		return nil, snapshot.NotStreamable(source.Reason(err), err)
	}
	return stream{h: h, socket: s.socket}, nil
}

func (s streams) FetchLayer(ctx context.Context, img snapshot.ImageRef, layerDigest string) (io.ReadCloser, error) {
	return s.src.FetchLayer(ctx, img.Ref, layerDigest)
}

// stream is one open image.
type stream struct {
	h      *source.Handle
	socket string
}

func (st stream) Key() string { return st.h.Artifact().Descriptor.Digest.String() }
func (st stream) Export() snapshot.Export {
	return snapshot.Export{Socket: st.socket, Name: st.h.Name()}
}
func (st stream) Close() error { return st.h.Close() }
