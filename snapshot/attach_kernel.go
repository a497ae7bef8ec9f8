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
