package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/imagebuild"
	"github.com/sluice-project/sluice/test/internal/qemuvm"
	"github.com/sluice-project/sluice/test/testutil"
)

// nodeRootfs is the whole-node guest's root filesystem: Debian with
// containerd, runc, docker-registry and systemd (its init), the kernel's
// modules, and two images pushed into the registry's storage (test/vm/node's
// constants say where): app:v1, and app:v2 (v1 and one more layer), which
// the guest pulls only after its reboot.
var nodeRootfs = qemuvm.Rootfs{
	Suite: "bookworm",
	Include: []string{"containerd", "runc", "docker-registry", "systemd", "systemd-sysv", "udev", "kmod",
		"iproute2", "procps", "e2fsprogs", "util-linux"},
	Populate: populateNode,
	Recipe:   "node-2: /etc/hosts, hostname, resolv.conf; app:v1 = busybox + /app (200 random files, sums.txt, hello); app:v2 = app:v1 + /app/v2",
	FreeMiB:  1536,
}

// populateNode writes the files an installer would (debootstrap leaves
// /etc/hosts out, and the host's hostname and resolv.conf in; a CRI pod on
// the host network gets copies of /etc/hosts and /etc/resolv.conf), and
// pushes app:v1 and app:v2 into the registry storage the guest's registry
// serves, with a registry on this host.
func populateNode(ctx context.Context, root string) error {
	for f, content := range map[string]string{
		"etc/hostname":    "sluice-node\n",
		"etc/hosts":       "127.0.0.1\tlocalhost\n127.0.1.1\tsluice-node\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/resolv.conf": "# The test VM has no network card: loopback only.\n",
	} {
		p := filepath.Join(root, f)
		os.Remove(p)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	dir := filepath.Join(root, "var/lib/sluice-vm/registry")
	reg, err := debregistry.Start(dir)
	if err != nil {
		return err
	}
	defer reg.Stop()
	app1, err := nodeImage()
	if err != nil {
		return err
	}
	app2, err := nodeImageV2(app1)
	if err != nil {
		return err
	}
	for tag, img := range map[string]v1.Image{"v1": app1, "v2": app2} {
		ref, err := name.ParseReference(reg.Addr+"/app:"+tag, name.Insecure)
		if err != nil {
			return err
		}
		if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
			return err
		}
	}
	// The host's registry leaves its config and logs; the guest's writes
	// its own.
	for _, f := range []string{"registry.yml", "registry.log"} {
		os.Remove(filepath.Join(dir, f))
	}
	return nil
}

// nodeImageV2 is app:v2: app:v1 and a layer with /app/v2.
func nodeImageV2(base v1.Image) (v1.Image, error) {
	l := imagebuild.New().Layer()
	l.File("app/v2", []byte("hello from app:v2\n"), imagebuild.Meta{Mode: 0o644, ModTime: time.Unix(1700000000, 0)})
	gz, err := l.Gzip()
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(base, layer)
}

// nodeImage is app:v1: Debian's static busybox, and /app with 200 random
// files (about 25 MiB), their sha256sum list and a greeting.
func nodeImage() (v1.Image, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox-static: %w", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, err
	}
	meta := func(mode int64) imagebuild.Meta {
		return imagebuild.Meta{Mode: mode, ModTime: time.Unix(1700000000, 0)}
	}
	b := imagebuild.New()
	base := b.Layer()
	for _, d := range []string{"bin", "etc", "root", "proc", "sys", "dev", "run"} {
		base.Dir(d, meta(0o755))
	}
	base.Dir("tmp", meta(0o1777))
	base.File("bin/busybox", bb, meta(0o755))
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			base.Symlink("bin/"+applet, "busybox", meta(0o777))
		}
	}
	app := b.Layer()
	rng := rand.NewChaCha8([32]byte{'n', 'o', 'd', 'e'})
	var sums bytes.Buffer
	for i := range 200 {
		data := make([]byte, (i%10)*26<<10+i)
		rng.Read(data)
		p := fmt.Sprintf("app/data/f%03d", i)
		app.File(p, data, meta(0o644))
		sum := sha256.Sum256(data)
		fmt.Fprintf(&sums, "%s  /%s\n", hex.EncodeToString(sum[:]), p)
	}
	app.File("app/sums.txt", sums.Bytes(), meta(0o644))
	app.File("app/hello", []byte("hello from the image\n"), meta(0o644))
	var gz [][]byte
	for _, l := range []*imagebuild.Layer{base, app} {
		g, err := l.Gzip()
		if err != nil {
			return nil, err
		}
		gz = append(gz, g)
	}
	img, err := imagebuild.Image(gz...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config.Env = []string{"PATH=/bin"}
	cf.Config.Cmd = []string{"/bin/sh"}
	return mutate.ConfigFile(img, cf)
}

// nodeBoot is one boot of the node guest: what its run service runs, and
// how the boot ends.
type nodeBoot struct {
	name string // its section in the guest's output, and its directory
	run  string // the -test.run pattern of node.test
	then string // "reboot" or "poweroff"
	// last is what the kernel says last on the console when the boot
	// ends that way.
	last string
}

// nodeBoots: the guest boots its disk twice. The first boot installs the
// node and runs pods (test/vm/node's TestNode) and ends with a reboot; the
// second boots the same disk, as it was left, and checks that the node
// came back by itself (TestNodeAfterReboot).
var nodeBoots = []nodeBoot{
	{name: "node", run: "^TestNode$", then: "reboot", last: "reboot: Restarting system"},
	{name: "reboot", run: "^TestNodeAfterReboot$", then: "poweroff", last: "reboot: Power down"},
}

// TestNode boots the whole-node guest with systemd as init, twice from one
// disk: a copy-on-write overlay of the cached root filesystem, so that the
// installed node never reaches the cache. The guest gets the node release
// bundle (scripts/bundle.sh over static sluice and sluiced), crictl and
// test/vm/node's test binary, and runs that binary's tests as a service
// once the system is up.
func TestNode(t *testing.T) {
	k, cache := requireVM(t)
	ctx := testContext(t)
	start := time.Now()
	img, err := nodeRootfs.Image(ctx, cache, "node", k)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node root filesystem %s (%v)", img, time.Since(start).Round(time.Second))
	base, err := qemuvm.BaseInitramfs(k)
	if err != nil {
		t.Fatal(err)
	}
	baseFile, err := qemuvm.CachedArchive(cache, "base-"+k.Version, base)
	if err != nil {
		t.Fatal(err)
	}
	crictl, err := containerdtest.CrictlPath()
	if err != nil {
		t.Fatal(err)
	}
	work := workDir(t)
	bin := filepath.Join(work, "bin")
	buildStatic(t, ctx, bin,
		binary{name: "node.test", pkg: "test/vm/node", test: true},
		binary{name: "sluiced", pkg: "cmd/sluiced"},
		binary{name: "sluice", pkg: "cmd/sluice"})
	bundle := filepath.Join(work, "bundle")
	if out, err := exec.CommandContext(ctx, filepath.Join(repoRoot(), "scripts", "bundle.sh"), bundle, bin).CombinedOutput(); err != nil {
		t.Fatalf("scripts/bundle.sh: %v\n%s", err, out)
	}
	disk := filepath.Join(work, "node.qcow2")
	env := map[string]string{
		"PATH":              "/vm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME":              "/root",
		"TMPDIR":            "/tmp",
		testutil.VMEnv:      "1",
		"SLUICE_VM_BIN":     "/vm/bin",
		"SLUICE_VM_BUNDLE":  "/vm/bundle",
		"SLUICE_VM_BUSYBOX": "/vm/busybox",
	}

	var reports []string
	for i, nb := range nodeBoots {
		dir := filepath.Join(work, nb.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		run := qemuvm.NewArchive()
		run.File("vm/bin/node.test", filepath.Join(bin, "node.test"), 0o755)
		run.File("vm/bin/crictl", crictl, 0o755)
		if err := qemuvm.AddTree(run, "vm/bundle", bundle); err != nil {
			t.Fatal(err)
		}
		// Debian's docker-registry service would take 127.0.0.1:5000 from
		// the tests' registry.
		run.Bytes("vm/init.sh", qemuvm.SystemdInit("docker-registry.service"), 0o755)
		run.Bytes("vm/run.sh", qemuvm.SystemdRunScript(env, []qemuvm.Step{
			{Name: nb.name, Command: "/vm/bin/node.test -test.v -test.run '" + nb.run + "' -test.timeout 20m"},
			{Name: "journal", Command: "journalctl -b --no-pager -o short-monotonic -u sluiced -u containerd | grep -v 'loading plugin' | tail -n 200"},
		}, nb.then), 0o755)
		runFile := filepath.Join(dir, "run.cpio")
		if err := run.WriteFile(runFile); err != nil {
			t.Fatal(err)
		}
		// 2 CPUs, as many as this machine kind has cores: the node needs
		// no more, and an emulated CPU that waits for a descheduled one is
		// how guests lock up.
		m := qemuvm.Machine{Kernel: k, Initrd: []string{baseFile, runFile}, Disks: []string{disk},
			CPUs: 2, MemoryMiB: 3072, Append: qemuvm.SystemdAppend, Dir: dir}
		var b *qemuvm.Boot
		if i == 0 {
			b, err = bootFresh(t, ctx, m, img, disk, 25*time.Minute)
		} else {
			// No second try: the disk holds what the first boot left.
			b, err = m.Run(ctx, 15*time.Minute)
		}
		if err != nil {
			t.Error(err)
		}
		if b == nil {
			return
		}
		t.Logf("boot %d (%s) ran %v", i+1, nb.name, b.Elapsed.Round(time.Second))
		reports = append(reports, checkSection(t, b, nb.name, listTests(t, filepath.Join(bin, "node.test"), nb.run))...)
		if !strings.Contains(b.Console, nb.last) {
			t.Errorf("boot %d did not end with a %s (%q on the console)", i+1, nb.then, nb.last)
		}
		reports = append(reports, fmt.Sprintf("node VM boot %d (%s): %v", i+1, nb.name, b.Elapsed.Round(time.Second)))
		if t.Failed() {
			t.Logf("boot %d: the guest's journal (sluiced, containerd):\n%s", i+1, section(b, "journal"))
			t.Logf("boot %d: guest kernel log:\n%s", i+1, tail(dmesg(b), 80))
			t.Logf("boot %d: console:\n%s", i+1, tail(b.Console, 40))
			return
		}
	}
	reports = append(reports, fmt.Sprintf("node VM, both boots: whole test with image and builds: %v", time.Since(start).Round(time.Second)))
	writeReport(t, cache, "node", reports)
}

// bootFresh boots m from a new overlay of img at disk; if the guest's
// kernel locked up, which emulation on a loaded host does now and then, it
// says so and boots once more from a new overlay.
func bootFresh(t *testing.T, ctx context.Context, m qemuvm.Machine, img, disk string, timeout time.Duration) (*qemuvm.Boot, error) {
	t.Helper()
	for try := 0; ; try++ {
		if err := qemuvm.Overlay(ctx, img, disk); err != nil {
			return nil, err
		}
		b, err := m.Run(ctx, timeout)
		if !errors.Is(err, qemuvm.ErrLockup) || try > 0 {
			return b, err
		}
		t.Logf("booting again: %v; console:\n%s", err, tail(b.Console, 15))
	}
}

// section returns the lines of a guest's output section.
func section(b *qemuvm.Boot, name string) string {
	for _, s := range qemuvm.Sections(b.Output) {
		if s.Name == name {
			return strings.Join(s.Lines, "\n")
		}
	}
	return ""
}

// repoRoot is the module's root, found from the working directory (go
// test runs in the package's directory).
func repoRoot() string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}
