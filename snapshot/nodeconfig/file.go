package nodeconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	udiff "github.com/aymanbagabas/go-udiff"

	"github.com/sluice-project/sluice/snapshot/nodeconfig/tomledit"
)

// BackupSuffix names the copy of a config as it was before sluice
// changed it: FILE.sluice-backup.
const BackupSuffix = ".sluice-backup"

// ErrChanged is a config that changed since sluice set it up, so that
// restoring its backup would undo someone else's changes.
var ErrChanged = errors.New("changed since sluice set it up")

// Change is what was done to a file (or, on a dry run, would be).
type Change struct {
	// Path is the file.
	Path string
	// Diff is a unified diff from the old content to the new; "" if the
	// file stays as it is.
	Diff string
	// Backup is the backup written (or restored and removed), if any.
	Backup string
	// Summary says what changed, one line each; Notes what the operator
	// should know.
	Summary, Notes []string
}

// InstallContainerd sets sluice up in the containerd config at path (see
// PatchContainerd). Before the file first changes it is copied to
// path+BackupSuffix; that backup is kept while the file still names
// sluice's proxy plugin, so it keeps the file as it was before sluice.
// On a dry run nothing is written.
func InstallContainerd(path string, o Options, dryRun bool) (Change, error) {
	c := Change{Path: path}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return c, fmt.Errorf("containerd config: %w", err)
	}
	src, err := os.ReadFile(real)
	if err != nil {
		return c, fmt.Errorf("containerd config: %w", err)
	}
	p, err := PatchContainerd(src, o)
	if err != nil {
		return c, fmt.Errorf("containerd config %s: %w", path, err)
	}
	c.Notes = p.Notes
	if bytes.Equal(p.Config, src) {
		return c, nil
	}
	c.Summary = p.Changes
	c.Diff = udiff.Unified(path, path, string(src), string(p.Config))
	c.Backup = path + BackupSuffix
	configured, _ := Configured(src)
	_, statErr := os.Stat(c.Backup)
	keepBackup := configured && statErr == nil
	if dryRun {
		if keepBackup {
			c.Backup = ""
		}
		return c, nil
	}
	if keepBackup {
		c.Backup = ""
	} else if err := writeLike(c.Backup, src, real); err != nil {
		return c, fmt.Errorf("backup of %s: %w", path, err)
	}
	if err := writeLike(real, p.Config, real); err != nil {
		return c, fmt.Errorf("containerd config %s: %w", path, err)
	}
	return c, nil
}

// UninstallContainerd undoes InstallContainerd: the backup is restored
// byte for byte, and removed, if the file is still what sluice made of
// it; otherwise ErrChanged, unless force. A file without sluice's proxy
// plugin is left alone. On a dry run nothing is written.
func UninstallContainerd(path string, force, dryRun bool) (Change, error) {
	c := Change{Path: path}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return c, fmt.Errorf("containerd config: %w", err)
	}
	cur, err := os.ReadFile(real)
	if err != nil {
		return c, fmt.Errorf("containerd config: %w", err)
	}
	d, err := tomledit.Parse(cur)
	if err != nil {
		return c, fmt.Errorf("containerd config %s: %w", path, err)
	}
	backup := path + BackupSuffix
	orig, err := os.ReadFile(backup)
	haveBackup := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return c, fmt.Errorf("backup of %s: %w", path, err)
	}
	if _, configured := d.Get(proxyKey); !configured {
		if haveBackup {
			c.Notes = append(c.Notes, fmt.Sprintf("%s does not name sluice's proxy plugin: left as it is, and so is %s", path, backup))
		}
		return c, nil
	}
	if !haveBackup {
		return c, fmt.Errorf("containerd config %s names sluice's proxy plugin but there is no backup %s to restore: "+
			"remove [%s] and set the CRI snapshotter back by hand", path, backup, proxyKey)
	}
	if !force {
		p, err := PatchContainerd(orig, optionsOf(d))
		if err != nil || !bytes.Equal(p.Config, cur) {
			return c, fmt.Errorf("containerd config %s: %w, so restoring %s would undo later changes: "+
				"compare the two and fix it by hand, or restore the backup anyway with --force", path, ErrChanged, backup)
		}
	}
	c.Diff = udiff.Unified(path, path, string(cur), string(orig))
	c.Backup = backup
	c.Summary = []string{"restored from " + backup}
	if dryRun {
		return c, nil
	}
	if err := writeLike(real, orig, real); err != nil {
		return c, fmt.Errorf("containerd config %s: %w", path, err)
	}
	if err := os.Remove(backup); err != nil {
		return c, fmt.Errorf("backup of %s: %w", path, err)
	}
	return c, nil
}

// writeLike writes b to path atomically (a temporary file in its
// directory, renamed over it), with the mode and owner of like.
func writeLike(path string, b []byte, like string) error {
	st, err := os.Stat(like)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(st.Mode().Perm()); err != nil {
		f.Close()
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		if err := f.Chown(int(sys.Uid), int(sys.Gid)); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
