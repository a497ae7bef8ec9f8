package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// recover takes over what a previous process left under ROOT/images and
// the attacher's devices: image mounts still used are adopted (now, or on
// first use when the image cannot be resolved yet), the rest unmounted and
// detached. It never mounts anything.
func (s *Snapshotter) recover(ctx context.Context) error {
	log := s.logger(ctx)
	users, err := s.imageUsers(ctx)
	if err != nil {
		return err
	}
	devices := map[string]*Device{}
	if s.att != nil {
		list, err := s.att.Devices(ctx)
		if err != nil {
			return fmt.Errorf("listing %s devices: %w", s.att.Name(), err)
		}
		for _, d := range list {
			devices[d.ID] = d
		}
	}
	entries, err := os.ReadDir(filepath.Join(s.root, "images"))
	if err != nil {
		return err
	}
	var adopt []*imageMount
	for _, e := range entries {
		dir := filepath.Join(s.root, "images", e.Name())
		im, err := s.recoverImage(ctx, dir, users, devices)
		if err != nil {
			// One bad image must not keep the snapshotter from starting:
			// its containers fail, the others run.
			log.Error().Err(err).Str("dir", dir).Msg("recovering an image mount")
			continue
		}
		if im != nil {
			adopt = append(adopt, im)
		}
	}
	for _, dev := range devices {
		log.Info().Str("device", dev.Path).Str("attacher", s.att.Name()).Msg("detaching a device no image mount uses")
		if err := s.att.Detach(ctx, dev); err != nil {
			log.Warn().Err(err).Str("device", dev.Path).Msg("detaching a leftover device")
		}
	}
	for _, im := range adopt {
		if _, err := s.ensureImage(ctx, im.key, im.img); err != nil {
			log.Warn().Err(err).Str("image", im.img.String()).Msg("adopting an image mount; retried on first use")
		}
	}
	return nil
}

// recoverImage handles one ROOT/images/NAME directory. It returns the
// image mount to adopt, if any; devices it claims are deleted from devices.
func (s *Snapshotter) recoverImage(ctx context.Context, dir string, users map[string]int, devices map[string]*Device) (*imageMount, error) {
	log := s.logger(ctx)
	mnt := filepath.Join(dir, "mnt")
	mounted, err := isMountPoint(mnt)
	if err != nil {
		return nil, err
	}
	var st imageState
	if err := readJSON(filepath.Join(dir, "state.json"), &st); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		// Created but never attached (state is written before mounting).
		if mounted {
			return nil, fmt.Errorf("%s is mounted but has no state", mnt)
		}
		return nil, removeImageDir(dir)
	}
	var dev *Device
	if s.att != nil && st.Attacher == s.att.Name() {
		dev = devices[st.DeviceID]
		delete(devices, st.DeviceID)
	}
	im := &imageMount{
		key: st.Key, dir: dir, dev: dev, mounted: mounted,
		img: ImageRef{Ref: st.Ref, ManifestDigest: st.ManifestDigest},
	}
	if users[st.Key] == 0 {
		log.Info().Str("image", im.img.String()).Bool("mounted", mounted).Msg("removing an image mount no snapshot uses")
		if dev == nil && st.Attacher != "" && (s.att == nil || st.Attacher != s.att.Name()) {
			log.Warn().Str("attacher", st.Attacher).Str("device", st.DevicePath).
				Msg("the image's device belongs to another attacher; leaving it attached")
		}
		if err := s.teardownImage(ctx, im); err != nil {
			s.keepImage(im)
			return nil, err
		}
		return nil, nil
	}
	switch {
	case mounted && dev != nil:
		s.keepImage(im)
		return im, nil
	case mounted:
		// The device cannot be re-bound: leave the mount to the containers
		// using it; a new mount is made when it is next needed and free.
		log.Warn().Str("image", im.img.String()).Str("device", st.DevicePath).Str("attacher", st.Attacher).
			Msg("image mount whose device cannot be adopted")
		s.keepImage(im)
		return nil, nil
	default:
		if dev != nil {
			if err := s.att.Detach(ctx, dev); err != nil {
				return nil, fmt.Errorf("detach device %s of unmounted image %s: %w", dev.Path, im.img, err)
			}
		}
		// Mounted again on first use.
		return nil, os.Remove(filepath.Join(dir, "state.json"))
	}
}

func (s *Snapshotter) keepImage(im *imageMount) {
	s.imgMu.Lock()
	s.images[im.key] = im
	s.imgMu.Unlock()
}
