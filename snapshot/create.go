package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
)

// Prepare creates an active snapshot. For a layer of a streamable image
// being unpacked (see the package documentation) it commits a placeholder
// instead and returns an error that Is errdefs.ErrAlreadyExists.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	opts = append(slices.Clip(opts), dropInternalLabels)
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return nil, err
		}
	}
	if err := s.prepareRemote(ctx, key, parent, base.Labels, opts); !errors.Is(err, errNotRemote) {
		return nil, err
	}
	return s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.createSnapshot(ctx, snapshots.KindView, key, parent, append(slices.Clip(opts), dropInternalLabels))
}

// Mounts returns the mounts of an active or view snapshot again, mounting
// the image it is built on if needed (after a restart).
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var (
		snap storage.Snapshot
		info snapshots.Info
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		if snap, err = storage.GetSnapshot(ctx, key); err != nil {
			return fmt.Errorf("active snapshot %s: %w", key, err)
		}
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return nil, err
	}
	lowers, err := s.lowerDirsOf(ctx, info.Parent)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", key, err)
	}
	return s.mountSpec(snap, lowers), nil
}

// createSnapshot creates an ordinary active or view snapshot: the
// overlay snapshotter's behaviour, plus materializing placeholders of the
// parent chain and mounting the image it is built on.
func (s *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, err error) {
	var (
		snap storage.Snapshot
		info snapshots.Info
	)
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		snap, info, err = s.createRecord(ctx, kind, key, parent, opts)
		return err
	}); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.removeFailed(ctx, key)
		}
	}()

	// The new snapshot pins its parents (a parent with children cannot be
	// removed) while they are materialized.
	lowers, err := s.lowerDirsOf(ctx, parent)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s on %s: %w", key, parent, err)
	}
	if err := s.chownUpper(snap.ID, info, lowers); err != nil {
		return nil, err
	}
	return s.mountSpec(snap, lowers), nil
}

// createRecord creates the snapshot's directory and metadata; ctx holds a
// write transaction.
func (s *Snapshotter) createRecord(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (snap storage.Snapshot, info snapshots.Info, err error) {
	dir := filepath.Join(s.root, "snapshots")
	td, err := os.MkdirTemp(dir, "new-")
	if err != nil {
		return snap, info, fmt.Errorf("create snapshot directory: %w", err)
	}
	defer func() {
		if td != "" {
			os.RemoveAll(td)
		}
	}()
	if err := os.Mkdir(filepath.Join(td, "fs"), 0o755); err != nil {
		return snap, info, err
	}
	if kind == snapshots.KindActive {
		if err := os.Mkdir(filepath.Join(td, "work"), 0o711); err != nil {
			return snap, info, err
		}
	}
	if snap, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...); err != nil {
		return snap, info, fmt.Errorf("create snapshot %s: %w", key, err)
	}
	if _, info, _, err = storage.GetInfo(ctx, key); err != nil {
		return snap, info, err
	}
	if err := os.Rename(td, filepath.Join(dir, snap.ID)); err != nil {
		return snap, info, err
	}
	td = ""
	return snap, info, nil
}

// removeFailed removes a snapshot whose creation failed half-way.
func (s *Snapshotter) removeFailed(ctx context.Context, key string) {
	if err := s.Remove(context.WithoutCancel(ctx), key); err != nil {
		s.logger(ctx).Warn().Err(err).Str("key", key).Msg("removing a snapshot whose preparation failed")
	}
}

// chownUpper gives the new snapshot's fs directory the owner of the root
// it is built on, or the root of the user namespace its labels map, as
// containerd's overlay snapshotter does.
func (s *Snapshotter) chownUpper(id string, info snapshots.Info, lowers []string) error {
	uid, gid := -1, -1
	if v, ok := info.Labels[snapshots.LabelSnapshotUIDMapping]; ok {
		host, err := mappedRoot(v)
		if err != nil {
			return fmt.Errorf("label %s: %w", snapshots.LabelSnapshotUIDMapping, err)
		}
		uid, gid = host, host
		if v, ok := info.Labels[snapshots.LabelSnapshotGIDMapping]; ok {
			if gid, err = mappedRoot(v); err != nil {
				return fmt.Errorf("label %s: %w", snapshots.LabelSnapshotGIDMapping, err)
			}
		}
	} else if len(lowers) > 0 {
		st, err := os.Stat(lowers[0])
		if err != nil {
			return fmt.Errorf("stat parent: %w", err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		uid, gid = int(sys.Uid), int(sys.Gid)
	}
	if uid < 0 {
		return nil
	}
	if err := os.Lchown(s.upperPath(id), uid, gid); err != nil {
		return fmt.Errorf("chown snapshot directory: %w", err)
	}
	return nil
}

// mappedRoot returns the host ID that ID 0 maps to in a containerd ID
// mapping label ("container:host:size[,...]").
func mappedRoot(label string) (int, error) {
	for _, r := range strings.Split(label, ",") {
		f := strings.Split(r, ":")
		if len(f) != 3 {
			return 0, fmt.Errorf("mapping %q: want container:host:size", r)
		}
		var n [3]int
		for i := range f {
			v, err := strconv.ParseUint(f[i], 10, 32)
			if err != nil {
				return 0, fmt.Errorf("mapping %q: %w", r, err)
			}
			n[i] = int(v)
		}
		if n[0] == 0 && n[2] > 0 {
			return n[1], nil
		}
	}
	return 0, fmt.Errorf("mapping %q has no range for ID 0", label)
}

// mountSpec returns the mounts of snap given its lower directories,
// topmost first, following containerd's overlay snapshotter: a bind mount
// without parents, or for a view of a single lower directory; overlayfs
// otherwise.
func (s *Snapshotter) mountSpec(snap storage.Snapshot, lowers []string) []mount.Mount {
	if len(snap.ParentIDs) == 0 {
		mode := "rw"
		if snap.Kind == snapshots.KindView {
			mode = "ro"
		}
		return []mount.Mount{{Type: "bind", Source: s.upperPath(snap.ID), Options: []string{mode, "rbind"}}}
	}
	var options []string
	if snap.Kind == snapshots.KindActive {
		options = append(options,
			"workdir="+s.workPath(snap.ID),
			"upperdir="+s.upperPath(snap.ID),
		)
	} else if len(lowers) == 1 {
		return []mount.Mount{{Type: "bind", Source: lowers[0], Options: []string{"ro", "rbind"}}}
	}
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	options = append(options, s.ovlOpt...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}
