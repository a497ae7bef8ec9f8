package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Snapshotter is sluice's containerd snapshotter (see the package
// documentation). It implements snapshots.Snapshotter and snapshots.Cleaner.
type Snapshotter struct {
	root   string
	lock   *os.File // flock'ed: one process per root
	ms     *storage.MetaStore
	src    Source   // nil: ordinary snapshots only
	att    Attacher // nil: ordinary snapshots only
	opts   options
	ovlOpt []string // options of every overlay mount
	log    zerolog.Logger

	locks     keyedMutex
	decisions decisionCache
	stats     counters

	imgMu   sync.Mutex
	images  map[string]*imageMount // by stream key
	orphans []*Device              // of retired image mounts, still in use

	closeMu sync.Mutex
	closed  bool
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// New opens the snapshotter on root: ROOT/metadata.db (containerd's
// metadata store), ROOT/snapshots/ID/{fs,work}, ROOT/images/KEY; one
// process at a time (ROOT/lock). With a nil src or att it is an ordinary
// overlay snapshotter. New adopts the image mounts a previous process left
// (see the package documentation); ctx carries the logger used when a
// call's context has none.
func New(ctx context.Context, root string, src Source, att Attacher, opts ...Opt) (*Snapshotter, error) {
	o := options{policy: PolicyFallback, decisionTTL: time.Minute}
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := ParsePolicy(string(o.policy)); err != nil {
		return nil, err
	}
	if o.policy == PolicyRequire && (src == nil || att == nil) {
		return nil, fmt.Errorf("policy %q needs a source and an attacher", PolicyRequire)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	dtype, err := fs.SupportsDType(root)
	if err != nil {
		return nil, err
	}
	if !dtype {
		return nil, fmt.Errorf("%s does not support d_type (xfs needs ftype=1)", root)
	}
	for _, dir := range []string{"snapshots", "images"} {
		if err := os.Mkdir(filepath.Join(root, dir), 0o700); err != nil && !os.IsExist(err) {
			return nil, err
		}
	}
	// Recovery detaches what it does not know: two processes on one root
	// would undo each other's work.
	lock, err := os.OpenFile(filepath.Join(root, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("%s is in use by another snapshotter: %w", root, err)
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		lock.Close()
		return nil, err
	}
	s := &Snapshotter{
		root:      root,
		lock:      lock,
		ms:        ms,
		src:       src,
		att:       att,
		opts:      o,
		ovlOpt:    overlayOptions(o.mountOptions),
		log:       *zerolog.Ctx(ctx),
		decisions: decisionCache{ttl: o.decisionTTL},
		images:    map[string]*imageMount{},
	}
	if err := s.recover(ctx); err != nil {
		ms.Close()
		lock.Close()
		return nil, fmt.Errorf("recovering image mounts under %s: %w", root, err)
	}
	return s, nil
}

func overlayOptions(extra []string) []string {
	var opts []string
	has := func(name string) bool {
		for _, o := range extra {
			if o == name || strings.HasPrefix(o, name+"=") {
				return true
			}
		}
		return false
	}
	// As containerd's overlay snapshotter: lower directories on different
	// filesystems (the ext4 image mounts) must not need an index.
	if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil && !has("index") {
		opts = append(opts, "index=off")
	}
	return append(opts, extra...)
}

// logger returns the context's logger, or the one New was given.
func (s *Snapshotter) logger(ctx context.Context) *zerolog.Logger {
	if l := zerolog.Ctx(ctx); l.GetLevel() != zerolog.Disabled {
		return l
	}
	return &s.log
}

func (s *Snapshotter) upperPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}

func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "work")
}

// Stat returns the info of a snapshot by name or key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes a snapshot's labels; sluice's own labels cannot be
// changed or removed this way.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (newInfo snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, old, _, err := storage.GetInfo(ctx, info.Name)
		if err != nil {
			return err
		}
		newInfo, err = storage.UpdateInfo(ctx, keepInternalLabels(old, info), fieldpaths...)
		return err
	})
	return newInfo, err
}

// Usage returns the disk usage of a snapshot: scanned for active ones,
// recorded at commit for committed ones (zero for placeholders).
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return usage, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return snapshots.Usage{}, err
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
}

// Commit turns the active snapshot key into the committed snapshot name.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	opts = append(slices.Clip(opts), dropInternalLabels)
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		usage, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return err
		}
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage(usage), opts...); err != nil {
			return fmt.Errorf("commit snapshot %s: %w", key, err)
		}
		return nil
	})
}

// dropInternalLabels keeps callers from making a snapshot look like a
// placeholder.
func dropInternalLabels(info *snapshots.Info) error {
	for k := range info.Labels {
		if strings.HasPrefix(k, labelPrefix) {
			delete(info.Labels, k)
		}
	}
	return nil
}

// Remove removes a snapshot and its directory. When it was the last
// placeholder using an image mount, the mount is unmounted and its device
// detached.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var (
		removals []string
		imageKey string
	)
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if p, ok := placeholderOf(info.Labels); ok && !p.materialized {
			imageKey = p.key
		}
		if _, _, err := storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("remove snapshot %s: %w", key, err)
		}
		removals, err = s.unusedDirectories(ctx)
		return err
	}); err != nil {
		return err
	}
	// The snapshot is gone whatever happens below: failures are logged.
	for _, dir := range removals {
		if err := os.RemoveAll(dir); err != nil {
			s.logger(ctx).Warn().Err(err).Str("path", dir).Msg("removing snapshot directory")
		}
	}
	if imageKey != "" {
		if err := s.releaseImage(ctx, imageKey); err != nil {
			s.logger(ctx).Warn().Err(err).Str("image", imageKey).Msg("releasing an unused image mount; Cleanup retries")
		}
	}
	return nil
}

// Walk calls fn for each snapshot matching the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Cleanup removes directories of removed snapshots, releases image mounts
// no placeholder uses any more and detaches devices of retired ones.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var dirs []string
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		dirs, err = s.unusedDirectories(ctx)
		return err
	}); err != nil {
		return err
	}
	for _, dir := range dirs {
		if err := os.RemoveAll(dir); err != nil {
			s.logger(ctx).Warn().Err(err).Str("path", dir).Msg("removing snapshot directory")
		}
	}
	var errs []error
	for _, key := range s.imageKeys() {
		if err := s.releaseImage(ctx, key); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.detachOrphans(ctx))
	return errors.Join(errs...)
}

// unusedDirectories lists snapshot directories no snapshot owns; ctx must
// hold a write transaction so that no snapshot is being created meanwhile.
func (s *Snapshotter) unusedDirectories(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.root, "snapshots")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var unused []string
	for _, e := range entries {
		if _, ok := ids[e.Name()]; !ok {
			unused = append(unused, filepath.Join(dir, e.Name()))
		}
	}
	return unused, nil
}

// Close closes the metadata store, the streams of image mounts and the
// attacher, if it is an io.Closer (the kernel attacher stops serving its
// devices). It keeps devices and image mounts, so that running containers
// keep their root filesystems and the next snapshotter on this root adopts
// them.
func (s *Snapshotter) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	s.imgMu.Lock()
	for _, im := range s.images {
		if im.stream != nil {
			errs = append(errs, im.stream.Close())
			im.stream = nil
			im.live = false
		}
	}
	s.imgMu.Unlock()
	if c, ok := s.att.(io.Closer); ok {
		errs = append(errs, c.Close())
	}
	errs = append(errs, s.ms.Close(), s.lock.Close())
	return errors.Join(errs...)
}
