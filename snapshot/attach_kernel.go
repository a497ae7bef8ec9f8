package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// ExportServer serves exports on sockets handed to the kernel's nbd
// driver: the transmission phase only, since the attacher tells the kernel
// what a handshake would (size, flags). *nbdserver.Server implements it.
type ExportServer interface {
	// ExportSize is the named export's size in bytes, or an error if it is
	// not served (any more).
	ExportSize(name string) (int64, error)
	// ServeTransmission serves c as the named export until the client
	// disconnects or ctx is done, and closes c.
	ServeTransmission(ctx context.Context, c net.Conn, export string) error
}

// Defaults of the kernel attacher's settings.
const (
	// DefaultKernelTimeout is how long the kernel waits for the answer to
	// a block request before it sends the request again (on another
	// connection, or on the one that replaces a dead one). It is longer
	// than the agent's read timeout, so that a slow read gets the server's
	// EIO answer rather than being resent.
	DefaultKernelTimeout = 60 * time.Second
	// DefaultKernelDeadConnTimeout is how long requests wait for new
	// connections once every connection of a device is gone (the agent
	// restarts); after it, they fail with EIO.
	DefaultKernelDeadConnTimeout = 2 * time.Minute
	// DefaultKernelNBDsMax is the nbds_max the nbd module is loaded with
	// when the attacher loads it: devices made in advance (the kernel adds
	// more when all are in use).
	DefaultKernelNBDsMax = 16
	// MaxKernelConnections caps the connections (sockets) per device.
	MaxKernelConnections = 8
	// kernelBlockSize is the device's logical block size: ext4 images
	// have 4 KiB blocks, and the kernel's default of 1 KiB would split
	// requests needlessly.
	kernelBlockSize = 4096
)

// DefaultKernelConnections is the default number of connections per
// device: one per CPU, at most MaxKernelConnections.
func DefaultKernelConnections() int { return min(runtime.NumCPU(), MaxKernelConnections) }

// KernelAttacher attaches exports as /dev/nbdN through the kernel nbd
// driver's generic netlink interface. It has no listener: for each device
// it makes socket pairs, gives one end of each to the kernel (CONNECT) and
// serves the other itself through an ExportServer, in this process.
//
// Devices are read-only (NBD_FLAG_READ_ONLY) with 4 KiB blocks, have
// several connections (NBD_FLAG_CAN_MULTI_CONN), a request timeout and a
// dead-connection timeout, and carry a backend identifier naming the
// device's id and export (/sys/block/nbdN/backend). The kernel picks a
// free device itself, under its own lock, so that attaches never race for
// one.
//
// When the agent stops, the kernel's sockets lose their other end: reads
// wait, for up to the dead-connection timeout, for new connections. A new
// agent finds its devices again (Devices: the state files, checked against
// STATUS and the backend identifiers) and gives each new sockets
// (Adopt: RECONFIGURE), without a mounted filesystem noticing. A device
// whose reads already failed because the agent was away too long is not
// adopted: the caller replaces it. While the agent runs, a connection the
// kernel gives up on (after a request timeout) is replaced at once.
//
// Each device has a state file under the state directory, ID.json: its
// index, backend identifier, export and size.
type KernelAttacher struct {
	dir             string
	srv             ExportServer
	connections     int
	timeout         time.Duration
	deadConnTimeout time.Duration
	nbdsMax         int

	// Replaced in tests.
	modprobe string
	lookup   func() (nbdNetlink, error)

	ctx    context.Context // ends with Close: stops serving
	cancel context.CancelFunc

	mu      sync.Mutex
	nl      *nbdNetlink
	devices map[string]*kernelDevice // by ID: devices this process serves
}

// KernelOpt configures NewKernelAttacher.
type KernelOpt func(*KernelAttacher)

// KernelConnections sets the connections (sockets) per device, 1 to
// MaxKernelConnections (default DefaultKernelConnections).
func KernelConnections(n int) KernelOpt {
	return func(a *KernelAttacher) { a.connections = min(max(n, 1), MaxKernelConnections) }
}

// KernelTimeouts sets the request timeout (default DefaultKernelTimeout)
// and the dead-connection timeout (default DefaultKernelDeadConnTimeout);
// the kernel counts both in whole seconds, at least one.
func KernelTimeouts(timeout, deadConn time.Duration) KernelOpt {
	return func(a *KernelAttacher) { a.timeout, a.deadConnTimeout = timeout, deadConn }
}

// KernelNBDsMax sets the nbds_max the nbd module is loaded with, if the
// attacher loads it (default DefaultKernelNBDsMax).
func KernelNBDsMax(n int) KernelOpt {
	return func(a *KernelAttacher) { a.nbdsMax = n }
}

// NewKernelAttacher returns an attacher keeping its state under stateDir
// (which must survive the agent, not the host's reboot) and serving its
// devices with srv. Close stops serving them.
func NewKernelAttacher(stateDir string, srv ExportServer, opts ...KernelOpt) *KernelAttacher {
	if abs, err := filepath.Abs(stateDir); err == nil {
		stateDir = abs
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &KernelAttacher{
		dir:             stateDir,
		srv:             srv,
		connections:     DefaultKernelConnections(),
		timeout:         DefaultKernelTimeout,
		deadConnTimeout: DefaultKernelDeadConnTimeout,
		nbdsMax:         DefaultKernelNBDsMax,
		modprobe:        "modprobe",
		lookup:          lookupNBDFamily,
		ctx:             ctx,
		cancel:          cancel,
		devices:         map[string]*kernelDevice{},
	}
	for _, opt := range opts {
		opt(a)
	}
	return a
}

var _ Availability = (*KernelAttacher)(nil)

// Name is "kernel".
func (a *KernelAttacher) Name() string { return "kernel" }

// kernelState is a device's state file.
type kernelState struct {
	ID          string `json:"id"`
	Index       int64  `json:"index"` // -1 until CONNECT answered
	Backend     string `json:"backend"`
	Export      Export `json:"export"`
	Size        int64  `json:"size"`
	Connections int    `json:"connections"`
}

func (st kernelState) path() string { return nbdPath(st.Index) }

func nbdPath(index int64) string { return fmt.Sprintf("/dev/nbd%d", index) }

// backendID is a device's backend identifier: it names the export, and
// the device id makes it this device's alone.
func backendID(id, export string) string { return "sluice/" + id + "/" + export }

func (a *KernelAttacher) statePath(id string) string { return filepath.Join(a.dir, id+".json") }

func (a *KernelAttacher) saveState(st kernelState) error {
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return err
	}
	return writeJSON(a.statePath(st.ID), st)
}

func (a *KernelAttacher) loadState(id string) (kernelState, error) {
	var st kernelState
	err := readJSON(a.statePath(id), &st)
	return st, err
}

// netlink returns the nbd family, looked up once it exists.
func (a *KernelAttacher) netlink() (nbdNetlink, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.nl != nil {
		return *a.nl, nil
	}
	n, err := a.lookup()
	if err != nil {
		return nbdNetlink{}, fmt.Errorf("%w: %w", ErrNoNBDFamily, err)
	}
	a.nl = &n
	return n, nil
}

// seconds is d in the kernel's whole seconds, at least one.
func seconds(d time.Duration) uint64 {
	return uint64(max(1, (d+time.Second-1)/time.Second))
}

// Attach connects a new read-only /dev/nbdN to exp, served by the
// attacher's ExportServer under exp.Name (exp.Socket is not used).
func (a *KernelAttacher) Attach(ctx context.Context, exp Export) (_ *Device, err error) {
	if a.ctx.Err() != nil {
		return nil, fmt.Errorf("attach %s: %w", exp.Name, ErrAttacherClosed)
	}
	n, err := a.netlink()
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", exp.Name, err)
	}
	size, err := a.srv.ExportSize(exp.Name)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", exp.Name, err)
	}
	if size <= 0 || size%kernelBlockSize != 0 {
		return nil, fmt.Errorf("attach %s: export size %d is not a positive multiple of %d", exp.Name, size, kernelBlockSize)
	}
	id, err := newDeviceID()
	if err != nil {
		return nil, err
	}
	st := kernelState{ID: id, Index: -1, Backend: backendID(id, exp.Name), Export: exp, Size: size, Connections: a.connections}
	// Saved first, so that a crash leaves a trace Devices can follow.
	if err := a.saveState(st); err != nil {
		return nil, fmt.Errorf("attach %s: %w", exp.Name, err)
	}
	defer func() {
		if err != nil {
			os.Remove(a.statePath(id))
		}
	}()
	pairs, err := newSocketPairs(st.Connections)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", exp.Name, err)
	}
	index, err := n.connect(nbdConnect{
		size:            uint64(size),
		blockSize:       kernelBlockSize,
		timeout:         seconds(a.timeout),
		deadConnTimeout: seconds(a.deadConnTimeout),
		serverFlags:     nbdFlagHasFlags | nbdFlagReadOnly | nbdFlagCanMultiConn,
		backend:         st.Backend,
		fds:             kernelEnds(pairs),
	})
	// The kernel holds its own references to the sockets it took.
	closeKernelEnds(pairs)
	if err != nil {
		closeServerEnds(pairs)
		return nil, fmt.Errorf("attach %s: %w", exp.Name, err)
	}
	st.Index = int64(index)
	log := zerolog.Ctx(ctx).With().Str("device", st.path()).Str("export", exp.Name).Logger()
	if err := a.saveState(st); err != nil {
		closeServerEnds(pairs)
		if derr := n.disconnect(index); derr != nil {
			log.Warn().Err(derr).Msg("disconnecting after a failed attach")
		}
		return nil, fmt.Errorf("attach %s to %s: %w", exp.Name, st.path(), err)
	}
	conns, err := serverConns(pairs)
	if err != nil {
		return nil, a.undoAttach(ctx, st, err)
	}
	d := a.serve(ctx, st)
	for _, c := range conns {
		d.keep(c)
	}
	if err := waitForNode(ctx, st.path()); err != nil {
		return nil, a.undoAttach(ctx, st, err)
	}
	log.Debug().Int("connections", st.Connections).Int64("size", size).Msg("attached (kernel nbd)")
	return &Device{ID: id, Path: st.path(), Export: exp}, nil
}

// undoAttach disconnects a device whose attach failed after CONNECT.
func (a *KernelAttacher) undoAttach(ctx context.Context, st kernelState, err error) error {
	err = fmt.Errorf("attach %s to %s: %w", st.Export.Name, st.path(), err)
	if derr := a.Detach(context.WithoutCancel(ctx), &Device{ID: st.ID, Path: st.path(), Export: st.Export}); derr != nil {
		return errors.Join(err, derr)
	}
	return err
}

// waitForNode waits until the device node exists (devtmpfs makes it as
// the kernel adds the device).
func waitForNode(ctx context.Context, path string) error {
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := os.Stat(path)
		if err == nil || !errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

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

// Close stops serving every device; they stay attached, their reads
// waiting for a new process to adopt them.
func (a *KernelAttacher) Close() error {
	a.cancel()
	a.mu.Lock()
	devs := make([]*kernelDevice, 0, len(a.devices))
	for _, d := range a.devices {
		devs = append(devs, d)
	}
	a.mu.Unlock()
	for _, d := range devs {
		d.wg.Wait()
	}
	return nil
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
