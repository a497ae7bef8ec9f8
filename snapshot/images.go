package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// imageMount is the ext4 filesystem of one streamed image, mounted
// read-only at dir/mnt from a device attached to the image's export.
type imageMount struct {
	key     string
	dir     string
	img     ImageRef
	dev     *Device // nil when no device is known
	stream  Stream  // nil until this process resolved the image
	mounted bool
	// live: mounted, and the device reads from stream's export.
	live bool
}

func (im *imageMount) mnt() string { return filepath.Join(im.dir, "mnt") }

// imageState is ROOT/images/KEY/state.json: what a restarted process
// needs to find an image mount's device again.
type imageState struct {
	Key            string `json:"key"`
	Ref            string `json:"ref"`
	ManifestDigest string `json:"manifest_digest"`
	Attacher       string `json:"attacher"`
	DeviceID       string `json:"device_id"`
	DevicePath     string `json:"device_path"`
}

var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// imageDir returns ROOT/images/NAME for a stream key: the key itself with
// ':' as '-' when that is a safe file name, else a hash of it.
func (s *Snapshotter) imageDir(key string) string {
	name := strings.ReplaceAll(key, ":", "-")
	if !safeName.MatchString(name) {
		sum := sha256.Sum256([]byte(key))
		name = "key-" + hex.EncodeToString(sum[:16])
	}
	return filepath.Join(s.root, "images", name)
}

// ensureImage returns the mount point of the image mount for key, mounting
// it (or adopting a device left by a previous process) if needed.
func (s *Snapshotter) ensureImage(ctx context.Context, key string, img ImageRef) (string, error) {
	unlock := s.locks.lock("image/" + key)
	defer unlock()
	return s.ensureImageLocked(ctx, key, img, nil)
}

// ensureImageLocked is ensureImage with the image's lock held; st, if not
// nil, is a Stream of the image already resolved, which it takes over.
func (s *Snapshotter) ensureImageLocked(ctx context.Context, key string, img ImageRef, st Stream) (_ string, err error) {
	s.imgMu.Lock()
	im := s.images[key]
	live := im != nil && im.live
	s.imgMu.Unlock()
	if live {
		if st != nil {
			st.Close()
		}
		return im.mnt(), nil
	}
	if s.src == nil || s.att == nil {
		return "", errors.New("image mount needed but streaming is not configured")
	}
	if st == nil {
		if st, err = s.src.Resolve(ctx, img); err != nil {
			return "", fmt.Errorf("resolve %s: %w", img, err)
		}
	}
	if st.Key() != key {
		st.Close()
		return "", fmt.Errorf("image %s now resolves to %s, not %s: %w", img, st.Key(), key, ErrNotStreamable)
	}
	if im != nil && im.mounted && im.dev != nil {
		// Left by a previous process: point the device at our export.
		err := s.att.Adopt(ctx, im.dev, st.Export())
		if err == nil {
			s.updateImage(func() { im.stream, im.live = st, true })
			s.logger(ctx).Info().Str("image", img.String()).Str("device", im.dev.Path).Msg("adopted image mount")
			return im.mnt(), nil
		}
		if ctx.Err() != nil {
			st.Close()
			return "", err
		}
		s.stats.add(func(c *counters) { c.attachErrors++ })
		s.logger(ctx).Warn().Err(err).Str("image", img.String()).Str("device", im.dev.Path).
			Msg("cannot adopt the image mount's device; replacing the mount (containers started before may fail to read)")
		s.retireImageMount(ctx, im)
	}
	if im == nil {
		im = &imageMount{key: key, dir: s.imageDir(key), img: img}
	}
	if err := s.mountImage(ctx, im, st); err != nil {
		st.Close()
		if !im.mounted {
			if rerr := removeImageDir(im.dir); rerr != nil {
				s.logger(ctx).Warn().Err(rerr).Str("dir", im.dir).Msg("removing the directory of a failed image mount")
			}
		}
		return "", err
	}
	s.updateImage(func() {
		im.stream, im.live = st, true
		s.images[key] = im
	})
	return im.mnt(), nil
}

// updateImage changes image mount fields that Stats and Close read.
func (s *Snapshotter) updateImage(change func()) {
	s.imgMu.Lock()
	defer s.imgMu.Unlock()
	change()
}

// retireImageMount gives up an image mount that cannot be adopted: it is
// detached lazily from the tree (containers that use it keep it) and its
// device detached now, or by Cleanup once they are gone.
func (s *Snapshotter) retireImageMount(ctx context.Context, im *imageMount) {
	if err := unix.Unmount(im.mnt(), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		s.logger(ctx).Warn().Err(err).Str("mount", im.mnt()).Msg("detaching a stale image mount")
	}
	dev := im.dev
	s.updateImage(func() { im.mounted, im.live, im.dev = false, false, nil })
	if dev == nil {
		return
	}
	if err := s.att.Detach(context.WithoutCancel(ctx), dev); err != nil {
		s.logger(ctx).Info().Err(err).Str("device", dev.Path).Msg("device still in use; Cleanup detaches it later")
		s.updateImage(func() { s.orphans = append(s.orphans, dev) })
	}
}

// mountImage attaches a device to st's export and mounts it at im.mnt().
func (s *Snapshotter) mountImage(ctx context.Context, im *imageMount, st Stream) (err error) {
	mnt := im.mnt()
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	mounted, err := isMountPoint(mnt)
	if err != nil {
		return err
	}
	if mounted {
		// A mount whose device is unknown (its state is lost, or it
		// belongs to another attacher) cannot be adopted, and must not be
		// mounted over.
		s.logger(ctx).Warn().Str("mount", mnt).Msg("replacing an image mount that cannot be adopted")
		s.retireImageMount(ctx, im)
	}
	dev, err := s.att.Attach(ctx, st.Export())
	if err != nil {
		if ctx.Err() == nil {
			s.stats.add(func(c *counters) { c.attachErrors++ })
		}
		return fmt.Errorf("attach %s: %w", st.Export(), err)
	}
	defer func() {
		if err != nil {
			if derr := s.att.Detach(context.WithoutCancel(ctx), dev); derr != nil {
				s.logger(ctx).Warn().Err(derr).Str("device", dev.Path).Msg("detaching after a failed mount")
			}
			os.Remove(filepath.Join(im.dir, "state.json"))
		}
	}()
	state := imageState{
		Key: im.key, Ref: im.img.Ref, ManifestDigest: im.img.ManifestDigest,
		Attacher: s.att.Name(), DeviceID: dev.ID, DevicePath: dev.Path,
	}
	if err := writeJSON(filepath.Join(im.dir, "state.json"), state); err != nil {
		return err
	}
	// noload: the device is read-only, so a journal (if any) cannot be
	// replayed; the converter writes a clean filesystem.
	if err := unix.Mount(dev.Path, mnt, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		s.stats.add(func(c *counters) { c.mountErrors++ })
		return fmt.Errorf("mount %s (ext4, ro) at %s: %w", dev.Path, mnt, err)
	}
	s.updateImage(func() { im.dev, im.mounted = dev, true })
	s.logger(ctx).Info().Str("image", im.img.String()).Str("key", im.key).Str("device", dev.Path).
		Str("attacher", s.att.Name()).Msg("image mounted")
	return nil
}

// releaseImage unmounts and detaches the image mount of key if no
// placeholder needs it any more.
func (s *Snapshotter) releaseImage(ctx context.Context, key string) error {
	unlock := s.locks.lock("image/" + key)
	defer unlock()
	return s.releaseImageLocked(ctx, key)
}

func (s *Snapshotter) releaseImageLocked(ctx context.Context, key string) error {
	s.imgMu.Lock()
	im := s.images[key]
	s.imgMu.Unlock()
	if im == nil {
		return nil
	}
	users, err := s.imageUsers(ctx)
	if err != nil {
		return err
	}
	if users[key] > 0 {
		return nil
	}
	if err := s.teardownImage(ctx, im); err != nil {
		return err
	}
	s.imgMu.Lock()
	delete(s.images, key)
	s.imgMu.Unlock()
	return nil
}

// teardownImage unmounts, detaches, closes the stream and removes the
// image's directory, in that order; on failure what is left stays recorded
// so that a later Cleanup or restart retries.
func (s *Snapshotter) teardownImage(ctx context.Context, im *imageMount) error {
	ctx = context.WithoutCancel(ctx)
	if im.mounted {
		if err := unmountIfMounted(im.mnt()); err != nil {
			return fmt.Errorf("unmount image %s: %w", im.img, err)
		}
		s.updateImage(func() { im.mounted, im.live = false, false })
	}
	if im.dev != nil {
		if err := s.att.Detach(ctx, im.dev); err != nil {
			return fmt.Errorf("detach device %s of image %s: %w", im.dev.Path, im.img, err)
		}
		s.updateImage(func() { im.dev = nil })
	}
	var st Stream
	s.updateImage(func() { st, im.stream = im.stream, nil })
	if st != nil {
		if err := st.Close(); err != nil {
			s.logger(ctx).Warn().Err(err).Str("image", im.img.String()).Msg("closing stream")
		}
	}
	if err := removeImageDir(im.dir); err != nil {
		return err
	}
	s.logger(ctx).Info().Str("image", im.img.String()).Str("key", im.key).Msg("image unmounted: no snapshot uses it")
	return nil
}

// detachOrphans retries detaching devices of retired image mounts.
func (s *Snapshotter) detachOrphans(ctx context.Context) error {
	var orphans []*Device
	s.updateImage(func() { orphans, s.orphans = s.orphans, nil })
	var errs []error
	for _, dev := range orphans {
		if err := s.att.Detach(ctx, dev); err != nil {
			errs = append(errs, fmt.Errorf("detach retired device %s: %w", dev.Path, err))
			s.updateImage(func() { s.orphans = append(s.orphans, dev) })
		}
	}
	return errors.Join(errs...)
}

// imageUsers counts, per image key, the placeholders that need its mount.
func (s *Snapshotter) imageUsers(ctx context.Context) (map[string]int, error) {
	users := map[string]int{}
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if p, ok := placeholderOf(info.Labels); ok && !p.materialized {
				users[p.key]++
			}
			return nil
		})
	})
	if errdefs.IsNotFound(err) { // an empty store has no bucket yet
		err = nil
	}
	return users, err
}

func (s *Snapshotter) imageKeys() []string {
	s.imgMu.Lock()
	defer s.imgMu.Unlock()
	keys := make([]string, 0, len(s.images))
	for k := range s.images {
		keys = append(keys, k)
	}
	return keys
}

// writeJSON writes v to path atomically.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// removeImageDir removes an image's directory, never into a filesystem
// still mounted in it.
func removeImageDir(dir string) error {
	points, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(points) > 0 {
		return fmt.Errorf("not removing %s: %s is mounted", dir, points[0])
	}
	return os.RemoveAll(dir)
}
