package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
)

// errNotRemote tells Prepare to create an ordinary snapshot.
var errNotRemote = errors.New("not a streamed layer")

// prepareRemote handles an unpack Prepare: it commits a placeholder and
// returns ErrAlreadyExists, returns errNotRemote for an ordinary snapshot,
// or fails (PolicyRequire, or a metadata error).
func (s *Snapshotter) prepareRemote(ctx context.Context, key, parent string, labels map[string]string, opts []snapshots.Opt) error {
	t, ok, missing := unpackTargetOf(labels)
	if !ok || s.src == nil || s.att == nil {
		return errNotRemote
	}
	if missing != "" {
		return s.notStreamed(ctx, t, NotStreamable("incomplete labels", fmt.Errorf("no %s label", missing)))
	}
	if err := s.decisions.get(t.img.String()); err != nil {
		return s.notStreamed(ctx, t, err)
	}
	st, err := s.src.Resolve(ctx, t.img)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("resolve %s: %w", t.img, err)
		}
		if !errors.Is(err, ErrNotStreamable) {
			err = NotStreamable("resolve failed", err)
		}
		return s.notStreamed(ctx, t, err)
	}
	imageKey := st.Key()
	unlock := s.locks.lock("image/" + imageKey)
	defer unlock()
	if _, err := s.ensureImageLocked(ctx, imageKey, t.img, st); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return s.notStreamed(ctx, t, NotStreamable("mount failed", err))
	}
	p := placeholder{image: t.top, key: imageKey, img: t.img, layer: t.layer}
	if err := s.commitPlaceholder(ctx, key, parent, t.name, p, opts); err != nil {
		if !errdefs.IsAlreadyExists(err) {
			if rerr := s.releaseImageLocked(ctx, imageKey); rerr != nil {
				s.logger(ctx).Warn().Err(rerr).Str("image", imageKey).Msg("releasing an unused image mount")
			}
			return err
		}
	} else {
		s.stats.add(func(c *counters) { c.placeholders++ })
	}
	s.logger(ctx).Debug().Str("snapshot", t.name).Str("image", t.img.String()).Bool("top", t.top).
		Msg("layer placeholder committed; no download")
	return fmt.Errorf("target snapshot %q: %w", t.name, errdefs.ErrAlreadyExists)
}

// Retry forgets why image (a reference, as CRI's labels name it) could
// not be streamed, so that its next pull tries it again at once: that
// pull brings new credentials.
func (s *Snapshotter) Retry(image string) { s.decisions.forget(image) }

// notStreamed applies the policy to an image that cannot be streamed,
// logging and counting it once per pull.
func (s *Snapshotter) notStreamed(ctx context.Context, t unpackTarget, reason error) error {
	first := s.decisions.put(t.img.String(), reason)
	why := Reason(reason)
	if s.opts.policy == PolicyRequire {
		if first {
			s.stats.add(func(c *counters) { c.refused[why]++ })
			s.logger(ctx).Warn().Str("image", t.img.String()).Str("reason", why).Err(reason).
				Msg("image cannot be streamed; policy require refuses the pull")
		}
		return fmt.Errorf("image %s cannot be streamed (policy %q): %w: %w", t.img, PolicyRequire, reason, errdefs.ErrFailedPrecondition)
	}
	if first {
		s.stats.add(func(c *counters) { c.fallbacks[why]++ })
		s.logger(ctx).Info().Str("image", t.img.String()).Str("reason", why).Err(reason).
			Msg("image cannot be streamed; pulling it the ordinary way")
	}
	return errNotRemote
}

// commitPlaceholder creates the active snapshot key and commits it at once
// as the placeholder name, in one transaction.
func (s *Snapshotter) commitPlaceholder(ctx context.Context, key, parent, name string, p placeholder, opts []snapshots.Opt) error {
	var created string
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		snap, _, err := s.createRecord(ctx, snapshots.KindActive, key, parent, opts)
		if err != nil {
			return err
		}
		created = filepath.Join(s.root, "snapshots", snap.ID)
		// Only the unpack's own labels survive a commit (containerd's
		// overlay does the same), plus the placeholder's.
		commitOpts := append(opts[:len(opts):len(opts)], snapshots.WithLabels(p.labels()))
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage{}, commitOpts...); err != nil {
			return fmt.Errorf("commit placeholder %s: %w", name, err)
		}
		return nil
	})
	if err != nil && created != "" {
		os.RemoveAll(created)
	}
	return err
}
