package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// The kernel attacher's devices after Attach: Detach, Devices, Adopt, and
// what the kernel says about them (STATUS, /sys/block/nbdN/backend).

// Detach disconnects dev (DISCONNECT), waits until the kernel has let go
// of it (STATUS), and removes its state. A mounted or otherwise busy
// device is refused.
func (a *KernelAttacher) Detach(ctx context.Context, dev *Device) error {
	st, err := a.loadState(dev.ID)
	if errors.Is(err, fs.ErrNotExist) {
		a.stopServing(dev.ID)
		return nil // already gone
	}
	if err != nil {
		return fmt.Errorf("device %s: %w", dev.ID, err)
	}
	if st.Index < 0 {
		// Never connected (a crash during Attach that Devices did not
		// find in the kernel).
		a.stopServing(st.ID)
		return a.removeState(st.ID)
	}
	n, err := a.netlink()
	if err != nil {
		return fmt.Errorf("detach %s: %w", st.path(), err)
	}
	owned, err := a.owned(n, st)
	if err != nil {
		return fmt.Errorf("detach %s: %w", st.path(), err)
	}
	if owned {
		points, err := mountedFrom(st.path())
		if err != nil {
			return err
		}
		if len(points) > 0 {
			return fmt.Errorf("detach %s: %w: mounted at %s", st.path(), ErrDeviceBusy, strings.Join(points, ", "))
		}
		if busyAfterUnmount(st.path()) {
			// Held by a mount no longer in the tree (detached lazily, still
			// used by containers), or opened by someone.
			return fmt.Errorf("detach %s: %w: opened exclusively (a lazily detached mount still used, or another user)", st.path(), ErrDeviceBusy)
		}
		if d := a.device(st.ID); d != nil {
			d.stopping.Store(true)
		}
		if err := n.disconnect(uint32(st.Index)); err != nil {
			return fmt.Errorf("detach %s: %w", st.path(), err)
		}
		if err := a.waitFree(ctx, n, st); err != nil {
			return err
		}
	}
	a.stopServing(st.ID)
	zerolog.Ctx(ctx).Debug().Str("device", st.path()).Str("export", st.Export.Name).Bool("was_connected", owned).Msg("detached (kernel nbd)")
	return a.removeState(st.ID)
}

// waitFree waits until STATUS says the device is no longer connected: the
// kernel drops its configuration once its receive threads are done and no
// one has the device open.
func (a *KernelAttacher) waitFree(ctx context.Context, n nbdNetlink, st kernelState) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := n.status(st.Index)
		if err != nil {
			return fmt.Errorf("detach %s: %w", st.path(), err)
		}
		if len(list) == 0 || !list[0].connected {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("detach %s: %w: still connected 10s after DISCONNECT (someone has it open)", st.path(), ErrDeviceBusy)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("detach %s: %w", st.path(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (a *KernelAttacher) removeState(id string) error {
	if err := os.Remove(a.statePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// owned reports whether st's device is still connected with st's backend
// identifier: the device this attacher made, not one someone else got
// since.
func (a *KernelAttacher) owned(n nbdNetlink, st kernelState) (bool, error) {
	if st.Index < 0 {
		return false, nil
	}
	list, err := n.status(st.Index)
	if err != nil {
		return false, err
	}
	if len(list) == 0 || !list[0].connected {
		return false, nil
	}
	return sysBackend(st.Index) == st.Backend, nil
}

// sysBackend reads a device's backend identifier ("" when it has none).
func sysBackend(index int64) string {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/nbd%d/backend", index))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// findBackend returns the index of the device with the backend identifier
// backend, or -1.
func findBackend(backend string) int64 {
	paths, _ := filepath.Glob("/sys/block/nbd*/backend")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != backend {
			continue
		}
		var index int64
		if _, err := fmt.Sscanf(filepath.Base(filepath.Dir(p)), "nbd%d", &index); err == nil {
			return index
		}
	}
	return -1
}

// Devices lists the devices of the state directory that the kernel still
// has connected with their backend identifier; the state of the others is
// removed.
func (a *KernelAttacher) Devices(ctx context.Context) ([]*Device, error) {
	entries, err := os.ReadDir(a.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	log := zerolog.Ctx(ctx)
	var devs []*Device
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		st, err := a.loadState(id)
		if err != nil {
			log.Warn().Err(err).Str("id", id).Msg("removing unreadable kernel device state")
			os.Remove(a.statePath(id))
			continue
		}
		n, err := a.netlink()
		if err != nil {
			// No nbd family: the module is not loaded, so no device of
			// ours can exist.
			log.Info().Str("id", id).Str("device", st.path()).Msg("forgetting a kernel device: the nbd module is not loaded")
			os.Remove(a.statePath(id))
			continue
		}
		if st.Index < 0 {
			// Attach did not get to record the index.
			if st.Index = findBackend(st.Backend); st.Index >= 0 {
				if err := a.saveState(st); err != nil {
					return nil, err
				}
			}
		}
		owned, err := a.owned(n, st)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", st.path(), err)
		}
		if !owned {
			log.Info().Str("id", id).Str("device", st.path()).Msg("forgetting a kernel device that is no longer connected")
			os.Remove(a.statePath(id))
			continue
		}
		devs = append(devs, &Device{ID: st.ID, Path: st.path(), Export: st.Export})
	}
	return devs, nil
}

// Adopt gives dev, left by a previous process, new connections served by
// this one (RECONFIGURE), then checks that it reads. exp must have the
// export name and size dev was attached with. A device whose reads failed
// while no agent served it (the dead-connection timeout passed) is not
// adopted: the error Is ErrDeviceDead.
func (a *KernelAttacher) Adopt(ctx context.Context, dev *Device, exp Export) error {
	st, err := a.loadState(dev.ID)
	if err != nil {
		return fmt.Errorf("device %s: %w", dev.ID, err)
	}
	if exp.Name != st.Export.Name {
		return fmt.Errorf("adopt %s: it reads export %q and cannot move to %q", st.path(), st.Export.Name, exp.Name)
	}
	n, err := a.netlink()
	if err != nil {
		return fmt.Errorf("adopt %s: %w", st.path(), err)
	}
	owned, err := a.owned(n, st)
	if err != nil {
		return fmt.Errorf("adopt %s: %w", st.path(), err)
	}
	if !owned {
		return fmt.Errorf("adopt %s: %w", st.path(), ErrDeviceGone)
	}
	size, err := a.srv.ExportSize(exp.Name)
	if err != nil {
		return fmt.Errorf("adopt %s: %w", st.path(), err)
	}
	if size != st.Size {
		return fmt.Errorf("adopt %s: export %s is %d bytes, the device %d", st.path(), exp.Name, size, st.Size)
	}
	if a.device(st.ID) != nil {
		// Served by this process already.
		return nil
	}
	if a.ctx.Err() != nil {
		return fmt.Errorf("adopt %s: %w", st.path(), ErrAttacherClosed)
	}
	return a.adopt(ctx, n, st)
}

// NBDDevice is one /dev/nbdN as the kernel's STATUS command reports it.
type NBDDevice struct {
	Path string
	// Connected: the device has a configuration (it is attached, or
	// opened while unattached); a free device has none.
	Connected bool
	// Backend is the device's backend identifier, "" if it has none.
	Backend string
}

// NBDStatus reports every nbd device of the kernel (STATUS), for
// diagnostics and tests. It fails with ErrNoNBDFamily if the nbd module is
// not loaded.
func NBDStatus() ([]NBDDevice, error) {
	n, err := lookupNBDFamily()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoNBDFamily, err)
	}
	list, err := n.status(-1)
	if err != nil {
		return nil, err
	}
	devs := make([]NBDDevice, len(list))
	for i, st := range list {
		devs[i] = NBDDevice{Path: nbdPath(int64(st.index)), Connected: st.connected}
		if st.connected {
			devs[i].Backend = sysBackend(int64(st.index))
		}
	}
	return devs, nil
}
