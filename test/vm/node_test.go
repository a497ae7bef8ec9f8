package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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

	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/imagebuild"
	"github.com/sluice-project/sluice/test/internal/qemuvm"
)

// nodeRootfs is the whole-node guest's root filesystem: Debian with
// containerd, runc and docker-registry, and systemd (issue 13 boots it as
// init; TestNode does not), the kernel's modules, and an image pushed into
// the registry's storage (test/vm/node's constants say where).
var nodeRootfs = qemuvm.Rootfs{
	Suite: "bookworm",
	Include: []string{"containerd", "runc", "docker-registry", "systemd", "systemd-sysv", "udev", "kmod",
		"iproute2", "procps", "e2fsprogs", "util-linux"},
	Populate: populateNode,
	Recipe:   "node-1: app:v1 = busybox + /app (200 random files, sums.txt, hello)",
	FreeMiB:  1536,
}

// populateNode pushes app:v1 into the registry storage the guest's
// registry serves, with a registry on this host.
func populateNode(ctx context.Context, root string) error {
	dir := filepath.Join(root, "var/lib/sluice-vm/registry")
	reg, err := debregistry.Start(dir)
	if err != nil {
		return err
	}
	defer reg.Stop()
	img, err := nodeImage()
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(reg.Addr+"/app:v1", name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return err
	}
	// The host's registry leaves its config and logs; the guest's writes
	// its own.
	for _, f := range []string{"registry.yml", "registry.log"} {
		os.Remove(filepath.Join(dir, f))
	}
	return nil
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

// switchRoot is the run archive's /vm/init.sh for the node guest: it
// mounts the disk, puts the binaries and the node's init script in it,
// and makes it the root, /vm/node-init.sh its init.
const switchRoot = `exec >/dev/ttyS1 2>&1
modprobe virtio_pci; modprobe virtio_blk; modprobe crc32c_generic; modprobe ext4
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || { echo "@@BEGIN node"; echo "cannot mount /dev/vda"; echo "@@END node 1"; return; }
rm -rf /newroot/vm; mkdir -p /newroot/vm
cp -a /vm/bin /vm/node-init.sh /newroot/vm/
cp /bin/busybox /newroot/vm/busybox
umount /proc /sys /tmp
mount --move /dev /newroot/dev
exec switch_root /newroot /vm/node-init.sh
`

// nodeInit is /vm/node-init.sh: PID 1 of the node guest (not systemd).
const nodeInit = `#!/bin/sh
export PATH=/vm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
export SLUICE_TEST_VM=1 SLUICE_VM_BIN=/vm/bin
exec >/dev/ttyS1 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
ip link set lo up
hostname sluice-node
modprobe overlay; modprobe loop
cd /tmp
echo '@@BEGIN node'
( /vm/bin/node.test -test.v -test.timeout 25m )
echo "@@END node $?"
echo '@@BEGIN dmesg'
dmesg
echo '@@END dmesg 0'
sync
/vm/busybox poweroff -f
`

// TestNode boots the whole-node guest (its root filesystem built once and
// cached) and runs test/vm/node's TestNode there.
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
	work := workDir(t)
	bin := filepath.Join(work, "bin")
	bins := []binary{
		{name: "node.test", pkg: "test/vm/node", test: true},
		{name: "sluiced", pkg: "cmd/sluiced"},
		{name: "sluice", pkg: "cmd/sluice"},
	}
	buildStatic(t, ctx, bin, bins...)
	run := qemuvm.NewArchive()
	for _, b := range bins {
		run.File("vm/bin/"+b.name, filepath.Join(bin, b.name), 0o755)
	}
	run.Bytes("vm/init.sh", []byte(switchRoot), 0o755)
	run.Bytes("vm/node-init.sh", []byte(nodeInit), 0o755)
	runFile := filepath.Join(work, "run.cpio")
	if err := run.WriteFile(runFile); err != nil {
		t.Fatal(err)
	}
	// 2 CPUs, as many as this machine kind has cores: the node needs no
	// more, and an emulated CPU that waits for a descheduled one is how
	// guests lock up.
	m := qemuvm.Machine{Kernel: k, Initrd: []string{baseFile, runFile}, Disks: []string{img}, Snapshot: true,
		CPUs: 2, MemoryMiB: 3072, Dir: work}
	b, err := boot(t, ctx, m, 30*time.Minute)
	if err != nil {
		t.Error(err)
	}
	if b == nil {
		return
	}
	reports := checkSection(t, b, "node", listTests(t, filepath.Join(bin, "node.test"), "."))
	reports = append(reports, fmt.Sprintf("node VM: %v; whole test with image and builds: %v", b.Elapsed.Round(time.Second), time.Since(start).Round(time.Second)))
	writeReport(t, cache, "node", reports)
	if t.Failed() {
		t.Logf("guest kernel log:\n%s", tail(dmesg(b), 80))
	}
}
