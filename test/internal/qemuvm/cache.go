package qemuvm

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CacheEnv overrides the cache directory, CacheDir by default.
const CacheEnv = "SLUICE_VM_CACHE"

// CacheDir is where built guest images are kept between runs: outside
// the repository, so that make test on a fresh clone reuses them, and
// under /var/cache, which survives reboots.
const CacheDir = "/var/cache/sluice-test/vm"

// Cache returns the cache directory, made if needed.
func Cache() (string, error) {
	dir := os.Getenv(CacheEnv)
	if dir == "" {
		dir = CacheDir
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("VM image cache: %w", err)
	}
	return dir, nil
}

// Cached returns dir/name, building it with build (which writes the file
// it is given) if it is not there yet. Builds are serialized by a lock
// file, so that concurrent test processes build each image once, and a
// build that fails or is interrupted leaves nothing under the name.
func Cached(dir, name string, build func(tmp string) error) (string, error) {
	final := filepath.Join(dir, name)
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", err
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	if _, err := os.Stat(final); err == nil {
		return final, nil // built meanwhile
	}
	tmp := final + ".building"
	os.RemoveAll(tmp)
	if err := build(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("building %s: %w", name, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	return final, nil
}
