package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// PortableAttacher attaches exports on hosts without the kernel's nbd
// driver: libnbd's nbdfuse exposes the export as a file on a FUSE mount
// and losetup -r makes a read-only loop device of that file.
//
// nbdfuse does not reconnect, so by default it does not dial the export
// itself: it runs a relay as its child, nbdkit's nbd plugin behind the
// retry filter, which reconnects when the agent (the NBD server) restarts
// and retries the read, for up to PortableRetry's budget. The kernel sees
// a slow read, not an error, and the device, its loop and its mounts stay.
// The relay dials a symlink to the export's socket, which Adopt re-points
// when the restarted agent serves the image on another socket. (Moving the
// loop device to a new file with LOOP_CHANGE_FD is no way out: since Linux
// 6.6 it reports a media change that shuts the mounted ext4 down.)
//
// Each device has a directory under the state directory:
//
//	ID/state.json    the export, the loop device
//	ID/export.sock   symlink to the export's socket (relay mode)
//	ID/fuse/nbd      the export as a file (nbdfuse's mount point)
//	ID/nbdfuse.pid   written by nbdfuse when it is ready
//	ID/nbdfuse.log   output of nbdfuse and the relay
type PortableAttacher struct {
	dir        string
	nbdfuse    string
	losetup    string
	nbdkit     string // "" connects nbdfuse to the export directly
	retries    int
	retryDelay int // seconds
	timeout    time.Duration

	mu       sync.Mutex
	children map[int]chan struct{} // nbdfuse processes started here: closed when reaped
}

// PortableOpt configures NewPortableAttacher.
type PortableOpt func(*PortableAttacher)

// PortableReadyTimeout bounds the wait for nbdfuse to be ready (default 30 s).
func PortableReadyTimeout(d time.Duration) PortableOpt {
	return func(a *PortableAttacher) { a.timeout = d }
}

// PortableBinaries sets the nbdfuse, losetup and nbdkit commands (default:
// found in PATH).
func PortableBinaries(nbdfuse, losetup, nbdkit string) PortableOpt {
	return func(a *PortableAttacher) { a.nbdfuse, a.losetup, a.nbdkit = nbdfuse, losetup, nbdkit }
}

// PortableRetry sets how long the relay keeps retrying a read while the
// export is unreachable: retries times, delay apart (default 60 times, 1 s:
// an agent restart may take up to a minute).
func PortableRetry(retries int, delay time.Duration) PortableOpt {
	return func(a *PortableAttacher) {
		a.retries, a.retryDelay = retries, max(1, int(delay.Round(time.Second)/time.Second))
	}
}

// PortableDirect connects nbdfuse to the export without the relay: one
// process less per device, but the device fails for good when the export's
// server restarts.
func PortableDirect() PortableOpt {
	return func(a *PortableAttacher) { a.nbdkit = "" }
}

// NewPortableAttacher returns an attacher keeping its state under
// stateDir, which must survive the agent (not the host's reboot).
func NewPortableAttacher(stateDir string, opts ...PortableOpt) *PortableAttacher {
	if abs, err := filepath.Abs(stateDir); err == nil {
		stateDir = abs
	}
	a := &PortableAttacher{
		dir:        stateDir,
		nbdfuse:    "nbdfuse",
		losetup:    "losetup",
		nbdkit:     "nbdkit",
		retries:    60,
		retryDelay: 1,
		timeout:    30 * time.Second,
		children:   map[int]chan struct{}{},
	}
	for _, opt := range opts {
		opt(a)
	}
	return a
}

var _ Availability = (*PortableAttacher)(nil)

// Name is "portable".
func (a *PortableAttacher) Name() string { return "portable" }

// Available checks for root, /dev/fuse, loop devices and the commands.
func (a *PortableAttacher) Available(context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (FUSE mounts, loop devices)")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			return err
		}
	}
	for _, bin := range []string{a.nbdfuse, a.losetup, a.nbdkit} {
		if bin == "" {
			continue
		}
		if _, err := exec.LookPath(bin); err != nil {
			return err
		}
	}
	return nil
}

type portableState struct {
	ID     string `json:"id"`
	Export Export `json:"export"`
	Relay  bool   `json:"relay"`
	Loop   string `json:"loop,omitempty"`
}

func (a *PortableAttacher) devDir(id string) string  { return filepath.Join(a.dir, id) }
func (a *PortableAttacher) fuseDir(id string) string { return filepath.Join(a.devDir(id), "fuse") }
func (a *PortableAttacher) pidFile(id string) string {
	return filepath.Join(a.devDir(id), "nbdfuse.pid")
}
func (a *PortableAttacher) link(id string) string { return filepath.Join(a.devDir(id), "export.sock") }

// fuseFile is the file nbdfuse creates in its mount point by default.
func (a *PortableAttacher) fuseFile(id string) string { return filepath.Join(a.fuseDir(id), "nbd") }

func (a *PortableAttacher) saveState(st portableState) error {
	return writeJSON(filepath.Join(a.devDir(st.ID), "state.json"), st)
}

func (a *PortableAttacher) loadState(id string) (portableState, error) {
	var st portableState
	err := readJSON(filepath.Join(a.devDir(id), "state.json"), &st)
	return st, err
}

// Attach starts nbdfuse for exp and attaches a read-only loop device to
// its file.
func (a *PortableAttacher) Attach(ctx context.Context, exp Export) (_ *Device, err error) {
	id, err := newDeviceID()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(a.devDir(id), 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			a.removeDevice(context.WithoutCancel(ctx), id)
		}
	}()
	// Saved first, so that a crash leaves a trace Devices cleans up.
	st := portableState{ID: id, Export: exp, Relay: a.nbdkit != ""}
	if err := a.saveState(st); err != nil {
		return nil, err
	}
	if st.Relay {
		if err := os.Symlink(exp.Socket, a.link(id)); err != nil {
			return nil, err
		}
	}
	if err := a.startNbdfuse(ctx, st); err != nil {
		return nil, err
	}
	file := a.fuseFile(id)
	out, err := exec.Command(a.losetup, "-r", "-f", "--show", file).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("losetup -r -f --show %s: %w: %s", file, err, bytes.TrimSpace(out))
	}
	st.Loop = strings.TrimSpace(string(out))
	if !strings.HasPrefix(st.Loop, "/dev/loop") {
		return nil, fmt.Errorf("losetup printed %q, not a loop device", st.Loop)
	}
	if err := a.saveState(st); err != nil {
		a.clearLoop(st)
		return nil, err
	}
	zerolog.Ctx(ctx).Debug().Str("device", st.Loop).Str("export", exp.String()).Bool("relay", st.Relay).
		Msg("attached (nbdfuse + loop)")
	return &Device{ID: id, Path: st.Loop, Export: exp}, nil
}

// Detach detaches the loop device, unmounts nbdfuse's file (nbdfuse and
// its relay then exit) and removes the device's state.
func (a *PortableAttacher) Detach(ctx context.Context, dev *Device) error {
	st, err := a.loadState(dev.ID)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // already gone
	}
	if err != nil {
		return fmt.Errorf("device %s: %w", dev.ID, err)
	}
	if st.Loop != "" {
		points, err := mountedFrom(st.Loop)
		if err != nil {
			return err
		}
		if len(points) > 0 {
			return fmt.Errorf("device %s is still mounted at %s", st.Loop, strings.Join(points, ", "))
		}
		if a.attached(st) && busyAfterUnmount(st.Loop) {
			// Held by a mount no longer in the tree (detached lazily, still
			// used by containers): losetup -d would only mark it autoclear.
			return fmt.Errorf("device %s is still in use", st.Loop)
		}
	}
	if err := a.clearLoop(st); err != nil {
		return err
	}
	return a.removeDevice(ctx, dev.ID)
}

// busyAfterUnmount reports whether dev stays busy for a moment: the
// kernel may let go of a device a little after the last unmount of a
// filesystem on it returns (the final close can be deferred, more so on a
// loaded machine), which is not a user.
func busyAfterUnmount(dev string) bool {
	for deadline := time.Now().Add(2 * time.Second); deviceBusy(dev); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return true
		}
	}
	return false
}

// clearLoop detaches st's loop device if it still reads from this device's
// file, and waits until the kernel has let go of the file.
func (a *PortableAttacher) clearLoop(st portableState) error {
	if st.Loop == "" || !a.attached(st) {
		return nil
	}
	if out, err := exec.Command(a.losetup, "-d", st.Loop).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup -d %s: %w: %s", st.Loop, err, bytes.TrimSpace(out))
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.attached(st) {
		if time.Now().After(deadline) {
			return fmt.Errorf("loop device %s still attached after losetup -d", st.Loop)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// attached reports whether st's loop device reads from st's file (and not
// from a file of someone who got the device number since).
func (a *PortableAttacher) attached(st portableState) bool {
	return st.Loop != "" && loopBackingFile(st.Loop) == a.fuseFile(st.ID)
}

// Devices lists the devices whose loop device still reads from their
// file; the remains of the others are cleaned up.
func (a *PortableAttacher) Devices(ctx context.Context) ([]*Device, error) {
	entries, err := os.ReadDir(a.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var devs []*Device
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		id := e.Name()
		st, err := a.loadState(id)
		if err != nil || !a.attached(st) {
			zerolog.Ctx(ctx).Info().Str("id", id).Msg("cleaning up a portable device that no longer exists")
			if err := a.removeDevice(ctx, id); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Str("id", id).Msg("cleaning up a portable device")
			}
			continue
		}
		devs = append(devs, &Device{ID: id, Path: st.Loop, Export: st.Export})
	}
	return devs, nil
}

// Adopt points dev's relay at exp, which must have the export name dev was
// attached with, and checks that the device reads.
func (a *PortableAttacher) Adopt(ctx context.Context, dev *Device, exp Export) error {
	st, err := a.loadState(dev.ID)
	if err != nil {
		return fmt.Errorf("device %s: %w", dev.ID, err)
	}
	if !a.attached(st) {
		return fmt.Errorf("loop device %s no longer reads from device %s", st.Loop, dev.ID)
	}
	if exp != st.Export {
		if !st.Relay || exp.Name != st.Export.Name {
			return fmt.Errorf("device %s reads from %s and cannot move to %s (the relay can follow a new socket, not a new export name)",
				st.Loop, st.Export, exp)
		}
		tmp := a.link(dev.ID) + ".new"
		os.Remove(tmp)
		if err := os.Symlink(exp.Socket, tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, a.link(dev.ID)); err != nil {
			return err
		}
		st.Export = exp
		if err := a.saveState(st); err != nil {
			return err
		}
		dev.Export = exp
	}
	return a.probe(ctx, dev.ID)
}

// probe reads the first block of the device's file: through nbdfuse and
// the relay to the export.
func (a *PortableAttacher) probe(ctx context.Context, id string) error {
	done := make(chan error, 1)
	go func() {
		f, err := os.Open(a.fuseFile(id))
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		_, err = f.ReadAt(make([]byte, 4096), 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("device %s does not read: %w", id, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// removeDevice stops the device's nbdfuse and removes its directory.
func (a *PortableAttacher) removeDevice(ctx context.Context, id string) error {
	if err := a.stopNbdfuse(ctx, id); err != nil {
		return err
	}
	return os.RemoveAll(a.devDir(id))
}
