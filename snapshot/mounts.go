package snapshot

import (
	"fmt"
	"path/filepath"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// isMountPoint reports whether path is a mount point, from
// /proc/self/mountinfo (a stat of a dead FUSE mount would fail).
func isMountPoint(path string) (bool, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return false, err
	}
	points, err := mountPoints(mountinfo.SingleEntryFilter(path))
	return len(points) > 0, err
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(dir string) ([]string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	return mountPoints(mountinfo.PrefixFilter(dir))
}

// unmountIfMounted unmounts path, and any mounts stacked on it, if it is a
// mount point.
func unmountIfMounted(path string) error {
	for range 8 {
		mounted, err := isMountPoint(path)
		if err != nil || !mounted {
			return err
		}
		if err := unix.Unmount(path, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted", path)
}

// mountedFrom returns the mount points whose source is the device dev.
func mountedFrom(dev string) ([]string, error) {
	return mountPoints(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Source != dev, false
	})
}

// mountPoints returns the mount points of the mounts filter keeps, from
// /proc/self/mountinfo.
func mountPoints(filter mountinfo.FilterFunc) ([]string, error) {
	mounts, err := mountinfo.GetMounts(filter)
	if err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	var points []string
	for _, m := range mounts {
		points = append(points, m.Mountpoint)
	}
	return points, nil
}
