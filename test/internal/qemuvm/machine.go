package qemuvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	// Disks are virtio disks (raw images), /dev/vda, /dev/vdb, ...
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
		drive := "file=" + d + ",format=raw,if=virtio,cache=unsafe"
		if m.Snapshot {
			drive += ",snapshot=on"
		}
		args = append(args, "-drive", drive)
	}
	cmd := exec.CommandContext(ctx, "timeout", args...)
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
