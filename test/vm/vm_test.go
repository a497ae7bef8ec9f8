package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/internal/qemuvm"
	"github.com/sluice-project/sluice/test/testutil"
)

const module = "github.com/sluice-project/sluice"

// requireVM returns the kernel to boot and the cache directory; a missing
// QEMU or kernel fails the test, naming the package.
func requireVM(t testing.TB) (qemuvm.Kernel, string) {
	t.Helper()
	testutil.Require(t, testutil.Root)
	if _, err := qemuvm.QEMU(); err != nil {
		t.Fatal(err)
	}
	k, err := qemuvm.FindKernel()
	if err != nil {
		t.Fatal(err)
	}
	cache, err := qemuvm.Cache()
	if err != nil {
		t.Fatal(err)
	}
	return k, cache
}

// binary is a static binary of this module built for a guest.
type binary struct {
	name string // file name in the guest's /vm/bin
	pkg  string // package, relative to the module
	test bool   // a test binary (go test -c)
}

// buildStatic builds the binaries with CGO_ENABLED=0 into dir.
func buildStatic(t testing.TB, ctx context.Context, dir string, bins ...binary) {
	t.Helper()
	start := time.Now()
	for _, b := range bins {
		args := []string{"build", "-o", filepath.Join(dir, b.name), module + "/" + b.pkg}
		if b.test {
			args = []string{"test", "-c", "-o", filepath.Join(dir, b.name), module + "/" + b.pkg}
		}
		cmd := exec.CommandContext(ctx, goTool(), args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Logf("built %d static binaries in %v", len(bins), time.Since(start).Round(time.Millisecond))
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// listTests lists the tests a test binary would run for pattern.
func listTests(t testing.TB, bin, pattern string) []string {
	t.Helper()
	out, err := exec.Command(bin, "-test.list", pattern).Output()
	if err != nil {
		t.Fatalf("%s -test.list: %v", bin, err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Test") {
			names = append(names, l)
		}
	}
	return names
}

// keepEnv, set to 1, keeps each boot's directory (console.log, output.log,
// the archives) and logs where it is.
const keepEnv = "SLUICE_VM_KEEP"

// workDir is a directory for one boot's files, removed at the end unless
// $SLUICE_VM_KEEP is 1.
func workDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-vm-")
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv(keepEnv) == "1" {
		t.Logf("boot files kept in %s", dir)
	} else {
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	return dir
}

// boot runs m; if the guest's kernel locked up, which emulation on a
// loaded host does now and then, it says so and boots once more.
func boot(t testing.TB, ctx context.Context, m qemuvm.Machine, timeout time.Duration) (*qemuvm.Boot, error) {
	t.Helper()
	b, err := m.Run(ctx, timeout)
	if errors.Is(err, qemuvm.ErrLockup) {
		t.Logf("booting again: %v; console:\n%s", err, tail(b.Console, 15))
		b, err = m.Run(ctx, timeout)
	}
	return b, err
}

// testContext is bounded by the test's deadline, less a minute to report.
func testContext(t *testing.T) context.Context {
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-time.Minute))
		t.Cleanup(cancel)
	}
	return ctx
}

// checkSection makes a subtest of each test a guest step ran: it fails if
// the test failed, or skipped (the guest has what every test needs), and
// the step fails if it did not finish, did not exit 0, or left out a test
// of want.
func checkSection(t *testing.T, b *qemuvm.Boot, name string, want []string) []string {
	t.Helper()
	var sec *qemuvm.Section
	for _, s := range qemuvm.Sections(b.Output) {
		if s.Name == name {
			sec = s
		}
	}
	if sec == nil {
		t.Errorf("the guest never ran %s; console:\n%s\noutput:\n%s", name, tail(b.Console, 40), tail(b.Output, 40))
		return nil
	}
	ran := map[string]bool{}
	t.Run(name, func(t *testing.T) {
		for _, gt := range qemuvm.GoTests(sec.Lines) {
			ran[gt.Name] = true
			t.Run(gt.Name, func(t *testing.T) {
				out := strings.Join(gt.Output, "\n")
				switch gt.Result {
				case "PASS":
					t.Log("\n" + out)
				case "SKIP":
					t.Errorf("skipped in the VM, which has what it needs:\n%s", out)
				case "FAIL":
					t.Errorf("failed in the VM:\n%s", out)
				default:
					t.Errorf("did not finish in the VM:\n%s", out)
				}
			})
		}
		for _, w := range want {
			if !ran[w] {
				t.Errorf("%s did not run in the VM", w)
			}
		}
		if !sec.Ended {
			t.Errorf("%s did not finish; last output:\n%s\nconsole:\n%s", name, tail(strings.Join(sec.Lines, "\n"), 30), tail(b.Console, 30))
		} else if sec.Code != 0 {
			t.Errorf("%s exited with %d:\n%s", name, sec.Code, tail(strings.Join(sec.Lines, "\n"), 30))
		}
	})
	return qemuvm.Reports(sec.Lines)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// dmesg returns the kernel log the guest wrote last.
func dmesg(b *qemuvm.Boot) string {
	for _, s := range qemuvm.Sections(b.Output) {
		if s.Name == "dmesg" {
			return strings.Join(s.Lines, "\n")
		}
	}
	return ""
}

// writeReport logs the figures and keeps them in the cache directory.
func writeReport(t testing.TB, cache, name string, lines []string) {
	t.Helper()
	if len(lines) == 0 {
		return
	}
	body := fmt.Sprintf("%s %s\n%s\n", time.Now().Format(time.RFC3339), name, strings.Join(lines, "\n"))
	t.Logf("figures:\n%s", body)
	if err := os.WriteFile(filepath.Join(cache, "last-report-"+name+".txt"), []byte(body), 0o644); err != nil {
		t.Log(err)
	}
}

// guest is a boot of the initramfs guest: static binaries of this module
// in /vm/bin, the steps it runs, and cached archives of extra tools.
type guest struct {
	bins  []binary
	tools [][]string // each a set of host tools, an archive of its own
	env   map[string]string
	steps []qemuvm.Step
}

// boot builds what the guest needs and runs it. It returns the boot and
// the directory of the binaries.
func (g guest) boot(t testing.TB, ctx context.Context, k qemuvm.Kernel, cache string) (*qemuvm.Boot, string) {
	t.Helper()
	start := time.Now()
	base, err := qemuvm.BaseInitramfs(k)
	if err != nil {
		t.Fatal(err)
	}
	initrd := make([]string, 1, 3)
	if initrd[0], err = qemuvm.CachedArchive(cache, "base-"+k.Version, base); err != nil {
		t.Fatal(err)
	}
	for _, tools := range g.tools {
		a := qemuvm.NewArchive()
		if err := qemuvm.AddDynamic(a, tools...); err != nil {
			t.Fatal(err)
		}
		f, err := qemuvm.CachedArchive(cache, "tools-"+strings.Join(tools, "-"), a)
		if err != nil {
			t.Fatal(err)
		}
		initrd = append(initrd, f)
	}
	t.Logf("guest archives %v (%v)", initrd, time.Since(start).Round(time.Millisecond))

	work := workDir(t)
	bin := filepath.Join(work, "bin")
	buildStatic(t, ctx, bin, g.bins...)
	run := qemuvm.NewArchive()
	for _, b := range g.bins {
		run.File("vm/bin/"+b.name, filepath.Join(bin, b.name), 0o755)
	}
	env := map[string]string{"SLUICE_TEST_VM": "1", "SLUICE_VM_BIN": "/vm/bin", "HOME": "/root", "TMPDIR": "/tmp"}
	for k, v := range g.env {
		env[k] = v
	}
	run.Bytes("vm/init.sh", qemuvm.RunScript(env, []string{"crc32c_generic", "ext4", "loop", "overlay"}, g.steps), 0o755)
	runFile := filepath.Join(work, "run.cpio")
	if err := run.WriteFile(runFile); err != nil {
		t.Fatal(err)
	}
	// 4 CPUs: the block layer gives a device at most one hardware queue
	// (and so one NBD connection in use) per CPU.
	m := qemuvm.Machine{Kernel: k, Initrd: append(initrd, runFile), CPUs: 4, MemoryMiB: 3072, Dir: work}
	b, err := boot(t, ctx, m, 40*time.Minute)
	if err != nil {
		t.Error(err)
	}
	if b == nil {
		t.FailNow()
	}
	t.Logf("VM ran %v (%v with builds)", b.Elapsed.Round(time.Second), time.Since(start).Round(time.Second))
	return b, bin
}

// TestKernelNBD runs the kernel attacher's tests (snapshot's TestKernel*)
// and test/vm/guest's in a guest booted from an initramfs.
func TestKernelNBD(t *testing.T) {
	k, cache := requireVM(t)
	ctx := testContext(t)
	start := time.Now()
	const kernelTests = "^TestKernel"
	g := guest{
		bins: []binary{
			{name: "snapshot.test", pkg: "snapshot", test: true},
			{name: "guest.test", pkg: "test/vm/guest", test: true},
			{name: "sluiced", pkg: "cmd/sluiced"},
		},
		steps: []qemuvm.Step{
			{Name: "snapshot", Command: "/vm/bin/snapshot.test -test.v -test.run '" + kernelTests + "' -test.timeout 15m"},
			{Name: "guest", Command: "/vm/bin/guest.test -test.v -test.timeout 25m"},
		},
	}
	b, bin := g.boot(t, ctx, k, cache)
	var reports []string
	reports = append(reports, checkSection(t, b, "snapshot", listTests(t, filepath.Join(bin, "snapshot.test"), kernelTests))...)
	reports = append(reports, checkSection(t, b, "guest", listTests(t, filepath.Join(bin, "guest.test"), "."))...)
	reports = append(reports, fmt.Sprintf("VM boot and tests: %v; whole test with builds: %v", b.Elapsed.Round(time.Second), time.Since(start).Round(time.Second)))
	writeReport(t, cache, "kernel-nbd", reports)
	if t.Failed() {
		t.Logf("guest kernel log:\n%s", tail(dmesg(b), 80))
	}
}

// BenchmarkFioInVM runs test/vm/guest's BenchmarkFio (fio on /dev/nbdN
// against a loop device over the same ext4 image) in a guest with fio,
// once, and reports its ratios. bench/vm/run.sh runs it.
func BenchmarkFioInVM(b *testing.B) {
	k, cache := requireVM(b)
	ctx := context.Background()
	g := guest{
		bins: []binary{
			{name: "guest.test", pkg: "test/vm/guest", test: true},
			{name: "sluiced", pkg: "cmd/sluiced"},
		},
		tools: [][]string{{"fio"}},
		env:   map[string]string{"SLUICE_FIO_RUNTIME": os.Getenv("SLUICE_FIO_RUNTIME")},
		steps: []qemuvm.Step{{Name: "fio", Command: "/vm/bin/guest.test -test.run '^$' -test.bench '^BenchmarkFio$' -test.benchtime 1x -test.v -test.timeout 30m"}},
	}
	boot, _ := g.boot(b, ctx, k, cache)
	for _, s := range qemuvm.Sections(boot.Output) {
		if s.Name != "fio" {
			continue
		}
		out := strings.Join(s.Lines, "\n")
		if !s.Ended || s.Code != 0 {
			b.Fatalf("the guest's fio benchmark failed:\n%s\nconsole:\n%s", out, tail(boot.Console, 30))
		}
		reports := qemuvm.Reports(s.Lines)
		if len(reports) == 0 {
			b.Fatalf("the guest's fio benchmark reported nothing:\n%s", out)
		}
		b.Logf("guest output:\n%s", out)
		writeReport(b, cache, "fio", reports)
		return
	}
	b.Fatalf("the guest never ran the fio benchmark; console:\n%s", tail(boot.Console, 40))
}
