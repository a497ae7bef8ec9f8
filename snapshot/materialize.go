package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// materialize fills the layer placeholder l with its layer, applied on top
// of parents (the lower directories of l's parent, topmost first), and
// marks it materialized: from then on it is an ordinary snapshot.
func (s *Snapshotter) materialize(ctx context.Context, l link, p placeholder, parents []string) error {
	unlock := s.locks.lock("snapshot/" + l.id)
	defer unlock()

	var done bool
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err := storage.GetInfo(ctx, l.name)
		if err != nil {
			return err
		}
		q, _ := placeholderOf(info.Labels)
		done = q.materialized
		return nil
	}); err != nil {
		return err
	}
	if done {
		return nil
	}

	log := s.logger(ctx).With().Str("snapshot", l.name).Str("image", p.img.String()).Str("layer", p.layer).Logger()
	log.Info().Msg("materializing a layer placeholder: fetching the layer")
	if err := s.applyLayer(ctx, l.id, p, parents); err != nil {
		s.stats.add(func(c *counters) { c.materializeFailures++ })
		return fmt.Errorf("materialize layer %s of %s (snapshot %s): %w", p.layer, p.img, l.name, err)
	}
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, info, _, err := storage.GetInfo(ctx, l.name)
		if err != nil {
			return err
		}
		info.Labels[labelMaterialized] = "true"
		_, err = storage.UpdateInfo(ctx, info, "labels."+labelMaterialized)
		return err
	}); err != nil {
		return fmt.Errorf("mark snapshot %s materialized: %w", l.name, err)
	}
	s.stats.add(func(c *counters) { c.materialized++ })
	log.Info().Msg("layer placeholder materialized")

	// The image mount may have been kept only for this placeholder.
	if err := s.releaseImage(ctx, p.key); err != nil {
		log.Warn().Err(err).Msg("releasing an unused image mount")
	}
	return nil
}

// applyLayer fetches the layer blob, verifies its digest and applies it
// with overlay whiteouts into a fresh directory that then replaces the
// snapshot's fs directory.
func (s *Snapshotter) applyLayer(ctx context.Context, id string, p placeholder, parents []string) (err error) {
	if s.src == nil {
		return errors.New("no source to fetch layers from")
	}
	want, err := digest.Parse(p.layer)
	if err != nil {
		return fmt.Errorf("layer digest: %w", err)
	}
	tmp := filepath.Join(s.root, "snapshots", id, "materialize")
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()

	blob, err := s.src.FetchLayer(ctx, p.img, p.layer)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	defer blob.Close()
	verifier := want.Verifier()
	raw := io.TeeReader(blob, verifier)
	tarStream, err := compression.DecompressStream(raw)
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			tarStream.Close()
		}
	}()
	opts := []archive.ApplyOpt{archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)}
	if len(parents) > 0 {
		opts = append(opts, archive.WithParents(parents))
	}
	if _, err := archive.Apply(ctx, tmp, tarStream, opts...); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	// The tar reader stops at the end-of-archive marker: read the rest of
	// the stream, close the decompressor (which may read in a goroutine of
	// its own), then the rest of the blob, so that the digest covers it all.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	closed = true
	if err := tarStream.Close(); err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !verifier.Verified() {
		return fmt.Errorf("blob does not match digest %s", want)
	}
	if err := syncFS(tmp); err != nil {
		return err
	}
	fsDir := filepath.Join(s.root, "snapshots", id, "fs")
	if err := os.RemoveAll(fsDir); err != nil {
		return err
	}
	return os.Rename(tmp, fsDir)
}

// syncFS makes what was written under dir durable before a label says it
// is there.
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}
