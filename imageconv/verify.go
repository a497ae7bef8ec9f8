package imageconv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// Verification compares one artifact the registry holds with what
// converting its image here gives.
type Verification struct {
	// Platform is the converted platform ("" if the image did not say).
	Platform string
	// Subject is the image manifest; Artifact the artifact the registry
	// holds for it; Rebuilt the digest converting it here gives, with the
	// artifact's chunk size.
	Subject, Artifact, Rebuilt v1.Hash
	ChunkSize                  int64
	// Why, when the digests differ, says what else differs.
	Why string
}

// Match reports whether the registry's artifact is what the image
// converts to.
func (v Verification) Match() bool { return v.Artifact == v.Rebuilt && v.Why == "" }

// Verify reconverts image (every platform, or those of WithPlatforms)
// locally, pushing nothing, and compares each sluice artifact the registry
// holds for it with the result: conversion is deterministic, so an
// artifact that does not match was not made from the image by this
// version of sluice. It returns an error that Is artifact.ErrNoArtifact if
// the registry holds none.
func Verify(ctx context.Context, image string, opts ...Option) ([]Verification, error) {
	o := newOptions(opts)
	ref, targets, workDir, err := o.prepare(ctx, image, "sluice-verify-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(workDir)
	var out []Verification
	for i, t := range targets {
		cands, err := artifact.Candidates(ctx, ref.Context(), t.desc.Digest, o.registry...)
		if err != nil {
			return nil, err
		}
		rebuilt := map[int64]v1.Hash{} // by chunk size
		for j, c := range cands {
			v := Verification{Platform: t.platform, Subject: t.desc.Digest, Artifact: c.Descriptor.Digest, ChunkSize: c.ChunkSize}
			switch {
			case c.Subject != t.desc.Digest:
				v.Why = fmt.Sprintf("its subject is %s, not the image's %s", c.Subject, t.desc.Digest)
			case artifact.ValidateChunkSize(c.ChunkSize) != nil:
				v.Why = fmt.Sprintf("its chunk size %d is not one sluice makes", c.ChunkSize)
			}
			if v.Why == "" {
				d, ok := rebuilt[c.ChunkSize]
				if !ok {
					co := *o
					co.chunkSize = c.ChunkSize
					o.progress.Phase(fmt.Sprintf("reconverting %s with %d-byte chunks", t.platform, c.ChunkSize), 0)
					b, _, err := buildOne(ctx, ref.Context(), t, filepath.Join(workDir, fmt.Sprint(i, "-", j)), &co)
					if err != nil {
						return nil, fmt.Errorf("%s: reconverting: %w", image, err)
					}
					d = b.manifest.Digest
					rebuilt[c.ChunkSize] = d
				}
				v.Rebuilt = d
			}
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w", image, artifact.ErrNoArtifact)
	}
	return out, nil
}
