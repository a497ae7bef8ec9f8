package agent

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sluice-project/sluice/test/internal/imagebuild"
)

// The test images. A and B share their two base layers (so their chain IDs):
// A is converted, B is not; Base is just those two layers (a container of
// it runs on the intermediate snapshot A commits as a placeholder).
// Tampered has a sluice artifact whose index blob is corrupt. The sandbox
// image shares nothing with them and never goes through the registry.
const (
	repoA        = "agent/a"
	repoB        = "agent/b"
	repoBase     = "agent/base"
	repoTampered = "agent/tampered"
	sandboxRef   = "sluice.test/pause:v1"
)

// testImage is one image of the set: where it is, what is in it.
type testImage struct {
	ref    string   // REGISTRY/REPO:v1
	img    v1.Image // as pushed
	digest string   // manifest digest
	layers []string // layer (blob) digests, bottom first
	config string   // config blob digest
	// listing is the reference listing: the image unpacked by umoci and
	// listed by listScript in a chroot.
	listing listing
}

var fixedTime = time.Unix(1_700_000_000, 0)

func meta(mode int64) imagebuild.Meta { return imagebuild.Meta{Mode: mode, ModTime: fixedTime} }

// baseLayers writes the two layers A, B and Base share, byte for byte, and
// returns the builder to write the layers above them with.
func baseLayers() (*imagebuild.Builder, [][]byte, error) {
	rng := rand.NewChaCha8([32]byte{'a', 'g', 'e', 'n', 't'})
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rng.Read(b)
		return b
	}
	b := imagebuild.New()
	l1 := b.Layer()
	if err := busyboxRoot(l1); err != nil {
		return nil, nil, err
	}
	l1.File("etc/os-release", []byte("NAME=\"sluice e2e base\"\n"), meta(0o644))

	l2 := b.Layer()
	l2.Dir("usr/share/shared", meta(0o755))
	l2.File("usr/share/shared/random-1.bin", random(1536<<10+77), meta(0o644))
	l2.File("usr/share/shared/random-2.bin", random(600<<10), meta(0o600))
	l2.Hardlink("usr/share/shared/hard-2.bin", "usr/share/shared/random-2.bin", meta(0o600))
	l2.File("usr/share/shared/zeros.bin", make([]byte, 512<<10), meta(0o644))
	for i := range 20 {
		var t bytes.Buffer
		for j := range 200 + i*40 {
			fmt.Fprintf(&t, "shared text %d line %d: %x\n", i, j, i*j)
		}
		l2.File(fmt.Sprintf("usr/share/shared/text-%02d.txt", i), t.Bytes(), meta(0o644))
	}
	l2.File("usr/share/shared/gone-in-a.txt", []byte("removed by image A\n"), meta(0o644))
	l2.File("usr/share/shared/gone-in-b.txt", []byte("removed by image B\n"), meta(0o644))
	l2.Dir("usr/share/shared/opaque", meta(0o755))
	l2.File("usr/share/shared/opaque/x.txt", []byte("x from the base\n"), meta(0o644))
	l2.File("usr/share/shared/opaque/y.txt", []byte("y from the base\n"), meta(0o644))
	l2.Symlink("usr/lib/libshared.so", "../share/shared/random-1.bin", meta(0o777))

	var gz [][]byte
	for _, l := range []*imagebuild.Layer{l1, l2} {
		g, err := l.Gzip()
		if err != nil {
			return nil, nil, err
		}
		gz = append(gz, g)
	}
	return b, gz, nil
}

// busyboxRoot adds a root filesystem with Debian's static busybox, a link
// for each of its applets, and the directories runtimes mount over.
func busyboxRoot(l *imagebuild.Layer) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static (scripts/install-deps.sh installs it): %w", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, d := range []string{"bin", "etc", "root", "proc", "sys", "dev", "run", "usr", "usr/lib"} {
		l.Dir(d, meta(0o755))
	}
	l.Dir("tmp", meta(0o1777))
	l.File("bin/busybox", bb, meta(0o755))
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			l.Symlink("bin/"+applet, "busybox", meta(0o777))
		}
	}
	l.File("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), meta(0o644))
	l.File("etc/group", []byte("root:x:0:\nnogroup:x:65534:\n"), meta(0o644))
	return nil
}

// topLayer returns image A's or B's own layer, or the tampered image's.
func topLayer(b *imagebuild.Builder, which string) ([]byte, error) {
	rng := rand.NewChaCha8([32]byte{'t', 'o', 'p', which[0]})
	random := func(n int) []byte {
		p := make([]byte, n)
		_, _ = rng.Read(p)
		return p
	}
	l := b.Layer()
	l.Dir("app", meta(0o755))
	l.File("app/name", []byte("image "+which+"\n"), meta(0o644))
	switch which {
	case "A":
		l.File("app/a-data.bin", random(2<<20+4321), meta(0o644))
		l.Whiteout("usr/share/shared/gone-in-a.txt")
		l.File("usr/share/shared/text-03.txt", []byte("text 3, replaced by A\n"), meta(0o644))
	case "B":
		l.File("app/b-data.bin", random(1<<20+999), meta(0o644))
		l.Whiteout("usr/share/shared/gone-in-b.txt")
		l.Opaque("usr/share/shared/opaque")
		l.File("usr/share/shared/opaque/z.txt", []byte("z from B\n"), meta(0o644))
		l.File("usr/share/shared/text-04.txt", []byte("text 4, replaced by B\n"), meta(0o644))
	default:
		l.File("app/t-data.bin", random(300<<10), meta(0o644))
	}
	return l.Gzip()
}

// newImage assembles an image of gz layers with PATH set.
func newImage(gz [][]byte, entrypoint ...string) (v1.Image, error) {
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
	cf.Config.WorkingDir = "/"
	cf.Config.Entrypoint = entrypoint
	if len(entrypoint) == 0 {
		cf.Config.Cmd = []string{"/bin/sh"}
	}
	return mutate.ConfigFile(img, cf)
}

// buildImages builds, pushes and lists the reference of every image; it
// returns them by repository.
func buildImages(ctx context.Context, registry, dir string) (map[string]*testImage, error) {
	out := map[string]*testImage{}
	for _, repo := range []string{repoA, repoB, repoBase, repoTampered} {
		b, gz, err := baseLayers()
		if err != nil {
			return nil, err
		}
		switch repo {
		case repoA, repoB:
			top, err := topLayer(b, strings.ToUpper(repo[len(repo)-1:]))
			if err != nil {
				return nil, err
			}
			gz = append(gz, top)
		case repoTampered:
			top, err := topLayer(b, "T")
			if err != nil {
				return nil, err
			}
			gz = [][]byte{gz[0], top}
		}
		img, err := newImage(gz)
		if err != nil {
			return nil, err
		}
		ti, err := describe(img, registry+"/"+repo+":v1")
		if err != nil {
			return nil, err
		}
		if err := push(ctx, ti); err != nil {
			return nil, err
		}
		if ti.listing, err = referenceListing(ctx, img, filepath.Join(dir, strings.ReplaceAll(repo, "/", "-"))); err != nil {
			return nil, fmt.Errorf("reference of %s: %w", repo, err)
		}
		out[repo] = ti
	}
	return out, nil
}

// describe records an image's digests.
func describe(img v1.Image, ref string) (*testImage, error) {
	ti := &testImage{ref: ref, img: img}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	ti.digest = d.String()
	cd, err := img.ConfigName()
	if err != nil {
		return nil, err
	}
	ti.config = cd.String()
	ls, err := img.Layers()
	if err != nil {
		return nil, err
	}
	for _, l := range ls {
		ld, err := l.Digest()
		if err != nil {
			return nil, err
		}
		ti.layers = append(ti.layers, ld.String())
	}
	return ti, nil
}

// pushConverted pushes the image of ti again as ref (to a registry of the
// test's own), with the same reference listing, and converts it there.
func (e *env) pushConverted(t *testing.T, ti *testImage, ref string) *testImage {
	t.Helper()
	out, err := describe(ti.img, ref)
	if err != nil {
		t.Fatal(err)
	}
	out.listing = ti.listing
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := push(ctx, out); err != nil {
		t.Fatal(err)
	}
	if b, err := e.run(ctx, e.sluice, "convert", "--plain-http", out.ref); err != nil {
		t.Fatalf("sluice convert: %v\n%s", err, b)
	}
	return out
}

func push(ctx context.Context, ti *testImage) error {
	ref, err := name.ParseReference(ti.ref, name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, ti.img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("pushing %s: %w", ti.ref, err)
	}
	return nil
}

// sandboxArchive writes the sandbox (pause) image, whose entrypoint
// sleeps, as a docker archive for ctr import. Its one layer shares nothing
// with the other images.
func sandboxArchive(path string) error {
	l := imagebuild.New().Layer()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	for _, d := range []string{"bin", "proc", "sys", "dev", "etc"} {
		l.Dir(d, meta(0o755))
	}
	l.File("bin/busybox", bb, meta(0o755))
	l.Symlink("bin/sleep", "busybox", meta(0o777))
	gz, err := l.Gzip()
	if err != nil {
		return err
	}
	img, err := newImage([][]byte{gz}, "/bin/sleep", "2147483647")
	if err != nil {
		return err
	}
	tag, err := name.NewTag(sandboxRef)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, img)
}

// listScript lists the root filesystem it runs in (not below /proc, /sys
// and /dev): one "S MODE UID GID TYPE|PATH" ("|'PATH' -> 'TARGET'" for a
// symlink) line per entry
// (busybox stat), one "SHA256  PATH" line per regular file, then "END".
// Batched with find -exec +, it costs a few processes, not one per file.
const listScript = `find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o -exec stat -c "S %a %u %g %F|%N" {} + &&
find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type f -exec sha256sum {} + &&
echo END`

// listing is the output of listScript: path -> "TYPE MODE UID GID", then
// " -> TARGET" for a symlink or " sha256:SUM" for a regular file.
type listing map[string]string

// parseListing checks for the END line and merges the lines by path.
func parseListing(out string) (listing, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || lines[len(lines)-1] != "END" {
		tail := lines[max(0, len(lines)-5):]
		return nil, fmt.Errorf("listing incomplete (no END line); it ends with %q", tail)
	}
	l := listing{}
	sums := map[string]string{}
	for _, line := range lines[:len(lines)-1] {
		if rest, ok := strings.CutPrefix(line, "S "); ok {
			meta, name, ok := strings.Cut(rest, "|")
			f := strings.SplitN(meta, " ", 4)
			if !ok || len(f) != 4 {
				return nil, fmt.Errorf("listing: unexpected line %q", line)
			}
			// busybox's %N quotes only symlinks: 'PATH' -> 'TARGET'.
			p, target, isLink := strings.Cut(name, "' -> '")
			entry := fmt.Sprintf("%s %s %s %s", f[3], f[0], f[1], f[2])
			if isLink {
				p = strings.TrimPrefix(p, "'")
				entry += " -> " + strings.TrimSuffix(target, "'")
			}
			l[p] = entry
			continue
		}
		sum, p, ok := strings.Cut(line, "  ")
		if !ok || len(sum) != 64 {
			return nil, fmt.Errorf("listing: unexpected line %q", line)
		}
		sums[p] = sum
	}
	for p, sum := range sums {
		if _, ok := l[p]; !ok {
			return nil, fmt.Errorf("listing: a checksum for %s, which stat did not list", p)
		}
		l[p] += " sha256:" + sum
	}
	return l, nil
}

// sha returns the sha256 of a regular file in the listing, or "".
func (l listing) sha(p string) string {
	_, sum, _ := strings.Cut(l[p], " sha256:")
	return sum
}

// runtimeFiles are added to a container's root by the runtime (CRI bind
// mounts them), not by the image.
var runtimeFiles = []string{"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}

// diff lists how got differs from the reference, at most max lines.
func (want listing) diff(got listing, maxLines int) []string {
	var d []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			d = append(d, fmt.Sprintf("missing: %s: %s", p, w))
		} else if g != w {
			d = append(d, fmt.Sprintf("differs: %s: want %q, got %q", p, w, g))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok && !isRuntimeFile(p) {
			d = append(d, fmt.Sprintf("extra:   %s: %s", p, g))
		}
	}
	sort.Strings(d)
	if len(d) > maxLines {
		d = append(d[:maxLines], fmt.Sprintf("... and %d more", len(d)-maxLines))
	}
	return d
}

func isRuntimeFile(p string) bool {
	for _, r := range runtimeFiles {
		if p == r {
			return true
		}
	}
	return false
}

// referenceListing unpacks img with umoci (an implementation independent
// of containerd and of sluice) and lists it with listScript in a chroot.
func referenceListing(ctx context.Context, img v1.Image, dir string) (listing, error) {
	lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		return nil, err
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})); err != nil {
		return nil, err
	}
	rootfs := filepath.Join(dir, "rootfs")
	if out, err := exec.CommandContext(ctx, "umoci", "raw", "unpack", "--image", filepath.Join(dir, "layout")+":v1", rootfs).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("umoci raw unpack: %v: %s", err, out)
	}
	out, err := exec.CommandContext(ctx, "chroot", rootfs, "/bin/sh", "-c", listScript).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("listing in chroot: %v: %s", err, out)
	}
	return parseListing(string(out))
}
