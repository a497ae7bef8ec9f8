package qemuvm

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestArchive: cpio(1) reads the archive back.
func TestArchive(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Fatalf("cpio not found: %v", err)
	}
	a := NewArchive()
	a.Bytes("etc/hello", []byte("hello\n"), 0o644)
	a.Symlink("bin/sh", "busybox")
	a.Dir("tmp", 0o1777)
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive of %d bytes, not a multiple of 4", buf.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-id", "--quiet")
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v: %s", err, out)
	}
	out, err := exec.Command("sh", "-c", "cd "+dir+" && find . | sort && cat etc/hello && readlink bin/sh && stat -c %a tmp").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	want := ".\n./bin\n./bin/sh\n./etc\n./etc/hello\n./tmp\nhello\nbusybox\n1777\n"
	if string(out) != want {
		t.Errorf("unpacked:\n%s\nwant:\n%s", out, want)
	}
	h1, _ := a.Hash()
	a.Bytes("etc/hello", []byte("hello!\n"), 0o644)
	if h2, _ := a.Hash(); h1 == h2 {
		t.Error("the hash did not change with a file's content")
	}
}

func TestSectionsAndGoTests(t *testing.T) {
	out := strings.Join([]string{
		"kernel noise",
		"@@BEGIN guest",
		"=== RUN   TestA",
		"    a_test.go:1: REPORT ratio 2.0",
		"--- PASS: TestA (1.00s)",
		"=== RUN   TestB",
		"=== RUN   TestB/sub",
		"--- FAIL: TestB (0.50s)",
		"    --- FAIL: TestB/sub (0.20s)",
		"=== RUN   TestC",
		"--- SKIP: TestC (0.00s)",
		"=== RUN   TestD",
		"FAIL",
		"@@END guest 1",
		"@@BEGIN dmesg",
		"[ 1.0] hello",
	}, "\n")
	secs := Sections(out)
	if len(secs) != 2 || secs[0].Name != "guest" || !secs[0].Ended || secs[0].Code != 1 || secs[1].Ended {
		t.Fatalf("sections %+v", secs)
	}
	tests := GoTests(secs[0].Lines)
	got := ""
	for _, gt := range tests {
		got += gt.Name + ":" + gt.Result + " "
	}
	if got != "TestA:PASS TestB:FAIL TestC:SKIP TestD: " {
		t.Errorf("tests %q", got)
	}
	if r := Reports(secs[0].Lines); len(r) != 1 || r[0] != "ratio 2.0" {
		t.Errorf("reports %q", r)
	}
}

// TestModuleDeps: dependencies come first (needs Debian's kernel, which
// scripts/install-deps.sh installs for the VM tests).
func TestModuleDeps(t *testing.T) {
	k, err := FindKernel()
	if err != nil {
		t.Fatal(err)
	}
	mods, err := k.moduleDeps("ext4")
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) < 2 || filepath.Base(mods[len(mods)-1]) != "ext4.ko" {
		t.Errorf("ext4 and its dependencies: %v", mods)
	}
	if _, err := k.moduleDeps("no_such_module"); err == nil {
		t.Error("an unknown module was found")
	}
}

func TestLockedUp(t *testing.T) {
	short := "[ 50.1] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [runc:247]\n"
	long := "[ 297.0] watchdog: BUG: soft lockup - CPU#3 stuck for 223s! [exe:253]\n"
	if _, ok := lockedUp([]byte("boot\n" + short)); ok {
		t.Error("a 23 s lockup stops the machine")
	}
	if line, ok := lockedUp([]byte(short + long)); !ok || !strings.Contains(line, "CPU#3 stuck for 223s") {
		t.Errorf("a 223 s lockup: %q, %v", line, ok)
	}
}

// TestMachineDiesWithTheTest: QEMU does not outlive a test process that
// dies (a test binary's -test.timeout panic ends it at once, cleanups
// unrun): the child below boots a guest that never powers off and is
// killed; its QEMU must go too.
func TestMachineDiesWithTheTest(t *testing.T) {
	if os.Getenv("QEMUVM_CHILD_DIR") != "" {
		bootForever(t, os.Getenv("QEMUVM_CHILD_DIR"))
		return
	}
	if _, err := QEMU(); err != nil {
		t.Fatal(err)
	}
	if _, err := FindKernel(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestMachineDiesWithTheTest$")
	cmd.Env = append(os.Environ(), "QEMUVM_CHILD_DIR="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(dir, "initrd.img")
	for deadline := time.Now().Add(30 * time.Second); len(processesWith(initrd)) == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the child's QEMU did not start in 30 s")
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left := processesWith(initrd)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, pid := range left {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Fatalf("QEMU (pids %v) outlived the killed test process", left)
		}
	}
}

// bootForever boots a guest whose init sleeps, until killed.
func bootForever(t *testing.T, dir string) {
	k, _ := FindKernel()
	a := NewArchive()
	if err := AddBusybox(a); err != nil {
		t.Fatal(err)
	}
	a.Bytes("init", []byte("#!/bin/sh\nwhile true; do sleep 60; done\n"), 0o755)
	p := filepath.Join(dir, "base.cpio")
	if err := a.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	m := Machine{Kernel: k, Initrd: []string{p}, Dir: dir, MemoryMiB: 256, CPUs: 1}
	m.Run(context.Background(), 10*time.Minute)
}

// processesWith returns the pids of processes with arg among their
// arguments.
func processesWith(arg string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, a := range bytes.Split(b, []byte{0}) {
			if string(a) == arg {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// TestOverlay: what is written to an overlay is read back from it, and
// its base image stays as it was.
func TestOverlay(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s (Debian package qemu-utils; scripts/install-deps.sh installs it): %v", tool, err)
		}
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	want := bytes.Repeat([]byte{0xab}, 1<<20)
	if err := os.WriteFile(base, want, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Overlay(context.Background(), base, filepath.Join(dir, "disk.img")); err == nil {
		t.Error("an overlay not named *.qcow2 was made")
	}
	disk := filepath.Join(dir, "disk.qcow2")
	for range 2 { // a second call replaces the first overlay
		if err := Overlay(context.Background(), base, disk); err != nil {
			t.Fatal(err)
		}
	}
	io := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("qemu-io", append([]string{"-f", "qcow2"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-io %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	io("-c", "write -P 0xcd 4096 4096", disk)
	if out := io("-c", "read -P 0xcd 4096 4096", "-c", "read -P 0xab 0 4096", disk); strings.Contains(out, "fail") {
		t.Errorf("reading the overlay back:\n%s", out)
	}
	if got, _ := os.ReadFile(base); !bytes.Equal(got, want) {
		t.Error("writing to the overlay changed its base image")
	}
}

// TestSystemdScripts: the scripts a systemd guest runs are valid shell,
// mask what they are asked to, and end the boot as asked.
func TestSystemdScripts(t *testing.T) {
	init := string(SystemdInit("docker-registry.service"))
	run := string(SystemdRunScript(map[string]string{"A": "it's"}, []Step{{Name: "one", Command: "true"}}, "reboot"))
	for name, script := range map[string]string{"init": init, "run": run} {
		if out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput(); err != nil {
			t.Errorf("%s script: sh -n: %v: %s\n%s", name, err, out, script)
		}
	}
	for _, want := range []string{"ln -sfn /dev/null \"$units\"/'docker-registry.service'\n", "exec switch_root /newroot /lib/systemd/systemd\n",
		"Wants=sluice-vm-run.service\n", "ExecStart=/bin/sh /vm/run.sh\n"} {
		if !strings.Contains(init, want) {
			t.Errorf("init script lacks %q:\n%s", want, init)
		}
	}
	for _, want := range []string{"export A='it'\\''s'\n", "echo '@@BEGIN one'\n", "echo '@@BEGIN dmesg'\n", "start reboot.target || "} {
		if !strings.Contains(run, want) {
			t.Errorf("run script lacks %q:\n%s", want, run)
		}
	}
	if !strings.HasSuffix(SystemdAppend, SystemdTarget) || !strings.Contains(init, "$units/"+SystemdTarget) {
		t.Errorf("the kernel command line %q does not start the target the init script writes", SystemdAppend)
	}
}
