package snapshot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// The connections of the kernel attacher's devices: socket pairs, the
// goroutines serving them, and their replacement.

// kernelDevice is a device this process serves: a goroutine per
// connection (keeper), each serving its socket and replacing it when the
// kernel lets go of it, until the device is detached or the attacher
// closed.
type kernelDevice struct {
	a        *KernelAttacher
	st       kernelState
	ctx      context.Context // carries the logger; ends when serving stops
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopping atomic.Bool // set before DISCONNECT: ended connections are not replaced
}

// serve registers st's device as served by this process.
func (a *KernelAttacher) serve(ctx context.Context, st kernelState) *kernelDevice {
	log := zerolog.Ctx(ctx).With().Str("device", st.path()).Str("export", st.Export.Name).Logger()
	dctx, cancel := context.WithCancel(log.WithContext(a.ctx))
	d := &kernelDevice{a: a, st: st, ctx: dctx, cancel: cancel}
	a.mu.Lock()
	a.devices[st.ID] = d
	a.mu.Unlock()
	return d
}

func (a *KernelAttacher) device(id string) *kernelDevice {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.devices[id]
}

// stopServing ends the connections of a device this process serves.
func (a *KernelAttacher) stopServing(id string) {
	a.mu.Lock()
	d := a.devices[id]
	delete(a.devices, id)
	a.mu.Unlock()
	if d != nil {
		d.stopping.Store(true)
		d.cancel()
		d.wg.Wait()
	}
}

// keep serves c (nil: none yet) and keeps the connection going.
func (d *kernelDevice) keep(c net.Conn) {
	d.wg.Add(1)
	go d.keepLoop(c)
}

// keepLoop serves the connection c until it ends. If the device still
// needs it (it is neither being detached nor the attacher closed, and its
// export is still served), it makes a new one and gives it to the kernel
// in place of the dead one (RECONFIGURE), retrying with a growing delay
// while the kernel has no dead connection to replace yet.
func (d *kernelDevice) keepLoop(c net.Conn) {
	defer d.wg.Done()
	log := zerolog.Ctx(d.ctx)
	backoff := 100 * time.Millisecond
	for {
		if c != nil {
			err := d.a.srv.ServeTransmission(d.ctx, c, d.st.Export.Name)
			if d.ctx.Err() != nil || d.stopping.Load() {
				return
			}
			log.Info().Err(err).Msg("a connection of the device ended; replacing it")
			c, backoff = nil, 100*time.Millisecond
		}
		select {
		case <-d.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
		if d.stopping.Load() {
			return
		}
		if _, err := d.a.srv.ExportSize(d.st.Export.Name); err != nil {
			log.Debug().Err(err).Msg("the export is no longer served; not replacing the device's connection")
			return
		}
		conns, _, err := d.reconnect(1)
		switch {
		case errors.Is(err, ErrDeviceGone):
			log.Info().Msg("the device is no longer connected; not replacing its connection")
			return
		case err != nil:
			log.Warn().Err(err).Dur("retry_in", backoff).Msg("replacing a connection of the device")
		case len(conns) == 1:
			c = conns[0]
		}
	}
}

// reconnect gives the kernel k new connections for the device's dead ones
// (RECONFIGURE). It returns those the kernel took, and how many it did not
// (it takes only as many as it has dead connections).
func (d *kernelDevice) reconnect(k int) ([]net.Conn, int, error) {
	n, err := d.a.netlink()
	if err != nil {
		return nil, 0, err
	}
	owned, err := d.a.owned(n, d.st)
	if err != nil {
		return nil, 0, err
	}
	if !owned {
		return nil, 0, ErrDeviceGone
	}
	pairs, err := newSocketPairs(k)
	if err != nil {
		return nil, 0, err
	}
	err = n.reconfigure(uint32(d.st.Index), d.st.Backend, kernelEnds(pairs))
	closeKernelEnds(pairs)
	if err != nil {
		closeServerEnds(pairs)
		return nil, 0, fmt.Errorf("reconfigure %s: %w", d.st.path(), err)
	}
	// The kernel keeps a reference to each socket it took; one it did not
	// take was closed with our copy just now, so its other end has hung
	// up already.
	var taken []socketPair
	refused := 0
	for _, p := range pairs {
		if hungUp(p.server) {
			unix.Close(p.server)
			refused++
			continue
		}
		taken = append(taken, p)
	}
	conns, err := serverConns(taken)
	return conns, refused, err
}

// adopt checks that the device still waits for connections rather than
// having given up on them, serves it with new ones, and checks that it
// reads.
func (a *KernelAttacher) adopt(ctx context.Context, n nbdNetlink, st kernelState) error {
	log := zerolog.Ctx(ctx).With().Str("device", st.path()).Str("export", st.Export.Name).Logger()
	// A read of a device whose connections are all dead waits for new
	// ones, unless the dead-connection timeout passed during an earlier
	// read: then it fails at once, as that read did. Such a device served
	// containers EIO; it is replaced, not revived.
	p := startProbe(st.path())
	blocked, done, err := p.waitBlocked(ctx, 3*time.Second)
	switch {
	case done && err != nil:
		return fmt.Errorf("adopt %s: %w: a read fails at once: %w", st.path(), ErrDeviceDead, err)
	case done:
		return fmt.Errorf("adopt %s: %w: it reads without new connections, so another process serves it", st.path(), ErrDeviceBusy)
	case !blocked:
		log.Warn().Msg("cannot tell whether the device waits for connections; adopting it")
	}
	d := a.serve(ctx, st)
	taken, missing := 0, st.Connections
	for deadline := time.Now().Add(5 * time.Second); ; {
		conns, refused, err := d.reconnect(missing)
		if err != nil {
			a.stopServing(st.ID)
			return fmt.Errorf("adopt %s: %w", st.path(), err)
		}
		for _, c := range conns {
			d.keep(c)
		}
		taken, missing = taken+len(conns), refused
		if taken > 0 || time.Now().After(deadline) {
			break
		}
		// Its old connections may not be marked dead yet.
		time.Sleep(100 * time.Millisecond)
	}
	if taken == 0 {
		a.stopServing(st.ID)
		return fmt.Errorf("adopt %s: %w: the kernel took none of %d new connections (none of its connections is dead)", st.path(), ErrDeviceBusy, st.Connections)
	}
	for range missing {
		d.keep(nil) // taken once the kernel marks more connections dead
	}
	bound := time.NewTimer(a.timeout + 30*time.Second)
	defer bound.Stop()
	select {
	case err := <-p.done:
		if err != nil {
			return fmt.Errorf("adopt %s: the device does not read: %w", st.path(), err)
		}
	case <-bound.C:
		return fmt.Errorf("adopt %s: the device does not read: no answer in %v", st.path(), a.timeout+30*time.Second)
	case <-ctx.Done():
		return fmt.Errorf("adopt %s: %w", st.path(), ctx.Err())
	}
	log.Info().Int("connections", taken).Int("pending", missing).Msg("adopted a kernel nbd device")
	return nil
}

// probe is a read of a device's first block that goes to the driver
// (O_DIRECT), on a thread of its own so that its state can be watched.
type probe struct {
	tid  chan int
	done chan error
}

func startProbe(path string) *probe {
	p := &probe{tid: make(chan int, 1), done: make(chan error, 1)}
	go func() {
		// Never unlocked: the thread ends with the goroutine.
		runtime.LockOSThread()
		p.tid <- unix.Gettid()
		p.done <- directRead(path)
	}()
	return p
}

// waitBlocked waits until the probe is done (done, with its error), or
// its thread has stayed in uninterruptible sleep for a while (blocked: the
// read waits in the driver), or max passed (neither).
func (p *probe) waitBlocked(ctx context.Context, max time.Duration) (blocked, done bool, err error) {
	var tid int
	select {
	case tid = <-p.tid:
	case <-ctx.Done():
		return false, false, ctx.Err()
	}
	stat := "/proc/self/task/" + strconv.Itoa(tid) + "/stat"
	const needed = 10 // polls 20 ms apart
	sleeping := 0
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err // for the caller's later wait, if any
			return false, true, err
		case <-ctx.Done():
			return false, false, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if threadState(stat) == 'D' {
			if sleeping++; sleeping >= needed {
				return true, false, nil
			}
		} else {
			sleeping = 0
		}
	}
	return false, false, nil
}

// threadState is the state letter of /proc/.../stat, or 0.
func threadState(stat string) byte {
	b, err := os.ReadFile(stat)
	if err != nil {
		return 0
	}
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' && i+2 < len(b) {
			return b[i+2]
		}
	}
	return 0
}

// directRead reads the first 4 KiB of a block device with O_DIRECT, past
// the page cache.
func directRead(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, kernelBlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	if _, err := unix.Pread(fd, buf, 0); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// socketPair is a connected pair of unix stream sockets: the kernel gets
// one end, this process serves the other.
type socketPair struct{ server, kernel int }

func newSocketPairs(n int) ([]socketPair, error) {
	pairs := make([]socketPair, 0, n)
	for range n {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			closeKernelEnds(pairs)
			closeServerEnds(pairs)
			return nil, fmt.Errorf("socketpair: %w", err)
		}
		pairs = append(pairs, socketPair{server: fds[0], kernel: fds[1]})
	}
	return pairs, nil
}

func kernelEnds(pairs []socketPair) []int {
	fds := make([]int, len(pairs))
	for i, p := range pairs {
		fds[i] = p.kernel
	}
	return fds
}

func closeKernelEnds(pairs []socketPair) {
	for i := range pairs {
		if pairs[i].kernel >= 0 {
			unix.Close(pairs[i].kernel)
			pairs[i].kernel = -1
		}
	}
}

func closeServerEnds(pairs []socketPair) {
	for i := range pairs {
		if pairs[i].server >= 0 {
			unix.Close(pairs[i].server)
			pairs[i].server = -1
		}
	}
}

// serverConns wraps the server ends as net.Conns (taking them over).
func serverConns(pairs []socketPair) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, len(pairs))
	for i, p := range pairs {
		f := os.NewFile(uintptr(p.server), "nbd-socket")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			closeServerEnds(pairs[i+1:])
			return nil, fmt.Errorf("socket: %w", err)
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// hungUp reports whether the other end of the socket fd is closed.
func hungUp(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	for {
		n, err := unix.Poll(pfd, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0 && pfd[0].Revents&(unix.POLLHUP|unix.POLLRDHUP) != 0
	}
}
