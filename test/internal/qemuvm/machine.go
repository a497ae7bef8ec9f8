package qemuvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Machine is a guest to boot: Debian's kernel under TCG (the host's
// /dev/kvm, when there is one, may not boot a stock kernel), no network
// card, the kernel's console on the first serial port and the tests'
// output on the second.
type Machine struct {
	Kernel Kernel
	// Initrd are archives (files) concatenated into the initramfs.
	Initrd []string
	// Disks are virtio disks, /dev/vda, /dev/vdb, ...: raw images, or
	// qcow2 ones (named *.qcow2, such as an Overlay).
	Disks []string
	// Snapshot discards what the guest writes to its disks.
	Snapshot  bool
	CPUs      int // default 2
	MemoryMiB int // default 2048
	// Append is added to the kernel command line.
	Append string
	// Dir receives the boot's files: initrd.img, console.log, output.log.
	Dir string
}

// Boot is what a finished boot left.
type Boot struct {
	// Output is what the guest wrote on its second serial port.
	Output string
	// Console is the kernel's console (first serial port).
	Console string
	Elapsed time.Duration
}

// Run boots the machine and waits until it powers off, timeout passes or
// ctx is done; QEMU runs under timeout(1) too, so that it never outlives
// the test. It returns an error if QEMU failed or was killed; the Boot
// holds what was written so far even then.
func (m Machine) Run(ctx context.Context, timeout time.Duration) (*Boot, error) {
	qemu, err := QEMU()
	if err != nil {
		return nil, err
	}
	if m.CPUs == 0 {
		m.CPUs = 2
	}
	if m.MemoryMiB == 0 {
		m.MemoryMiB = 2048
	}
	initrd := filepath.Join(m.Dir, "initrd.img")
	if err := concat(initrd, m.Initrd); err != nil {
		return nil, err
	}
	console, output := filepath.Join(m.Dir, "console.log"), filepath.Join(m.Dir, "output.log")
	args := []string{
		"--kill-after=10", strconv.Itoa(int(timeout.Seconds())), qemu,
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", strconv.Itoa(m.CPUs), "-m", strconv.Itoa(m.MemoryMiB),
		"-nographic", "-no-reboot", "-nic", "none", "-monitor", "none",
		"-kernel", m.Kernel.Image, "-initrd", initrd,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init " + m.Append),
		"-serial", "file:" + console, "-serial", "file:" + output,
	}
	for _, d := range m.Disks {
		format := "raw"
		if strings.HasSuffix(d, ".qcow2") {
			format = "qcow2"
		}
		drive := "file=" + d + ",format=" + format + ",if=virtio,cache=unsafe"
		if m.Snapshot {
			drive += ",snapshot=on"
		}
		args = append(args, "-drive", drive)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lockup := make(chan string, 1)
	go watchLockups(ctx, console, cancel, lockup)
	cmd := exec.CommandContext(ctx, "timeout", args...)
	// QEMU must not outlive the test, however the test ends: timeout(1)
	// and QEMU get a process group of their own, which a cancel kills
	// whole; and if this process dies first, timeout gets SIGTERM, which it
	// passes on to QEMU.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	log, err := os.Create(filepath.Join(m.Dir, "qemu.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.WaitDelay = 15 * time.Second
	start := time.Now()
	runErr := cmd.Run()
	b := &Boot{Elapsed: time.Since(start)}
	out, _ := os.ReadFile(output)
	con, _ := os.ReadFile(console)
	b.Output, b.Console = string(out), string(con)
	select {
	case line := <-lockup:
		return b, fmt.Errorf("%w: %s", ErrLockup, line)
	default:
	}
	if runErr != nil {
		qlog, _ := os.ReadFile(log.Name())
		var exit *exec.ExitError
		if errors.As(runErr, &exit) && exit.ExitCode() == 124 {
			return b, fmt.Errorf("the VM did not power off within %v: %s", timeout, qlog)
		}
		return b, fmt.Errorf("qemu: %w: %s", runErr, qlog)
	}
	return b, nil
}

func concat(dst string, parts []string) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	for _, p := range parts {
		in, err := os.Open(p)
		if err != nil {
			out.Close()
			return err
		}
		_, err = io.Copy(out, in)
		in.Close()
		if err != nil {
			out.Close()
			return err
		}
	}
	return out.Close()
}

// ErrLockup: the guest's kernel reported a CPU stuck for LockupLimit or
// longer, and the machine was stopped. Under emulation on a loaded host
// this happens now and then with no fault of the guest's software (every
// vCPU spins waiting for another, e.g. on a cross-CPU call); tests may boot
// again once.
var ErrLockup = errors.New("guest kernel soft lockup")

// LockupLimit is how long a CPU may stay stuck before the machine is
// stopped.
const LockupLimit = 120 * time.Second

var softLockup = regexp.MustCompile(`soft lockup - CPU#\d+ stuck for (\d+)s!.*`)

// watchLockups watches the console for soft lockups of LockupLimit or
// longer, and stops the machine (stop) on one, sending the line.
func watchLockups(ctx context.Context, console string, stop context.CancelFunc, found chan<- string) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
		b, err := os.ReadFile(console)
		if err != nil {
			continue
		}
		if line, ok := lockedUp(b); ok {
			found <- line
			stop()
			return
		}
	}
}

// lockedUp returns the first line of a console log reporting a CPU stuck
// for LockupLimit or longer.
func lockedUp(console []byte) (string, bool) {
	for _, m := range softLockup.FindAllSubmatch(console, -1) {
		if secs, _ := strconv.Atoi(string(m[1])); time.Duration(secs)*time.Second >= LockupLimit {
			return string(m[0]), true
		}
	}
	return "", false
}
