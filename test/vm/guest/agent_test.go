package guest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/test/internal/proc"
	"github.com/sluice-project/sluice/test/testutil"
)

// image is an image pushed to the in-process registry and converted.
type image struct {
	unpack testutil.UnpackImage
	files  tree // the whole rootfs
}

// pushConverted pushes an image of the layers to a new in-process
// registry (on the guest's loopback) and converts it with the project's
// converter.
func pushConverted(t testing.TB, layers ...tree) (registry string, img *image) {
	t.Helper()
	registry = testutil.Registry(t)
	img = &image{files: tree{}}
	img.unpack.Ref = registry + "/app:v1"
	var ls []v1.Layer
	var diffIDs []digest.Digest
	for _, tr := range layers {
		b := tr.layer(t)
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		d, _ := l.Digest()
		diff, _ := l.DiffID()
		img.unpack.Layers = append(img.unpack.Layers, d.String())
		img.unpack.Blobs = append(img.unpack.Blobs, b)
		diffIDs = append(diffIDs, digest.Digest(diff.String()))
		ls = append(ls, l)
		for p, c := range tr {
			img.files[p] = c
		}
	}
	for _, c := range identity.ChainIDs(diffIDs) {
		img.unpack.Chain = append(img.unpack.Chain, c.String())
	}
	im, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := im.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if im, err = mutate.ConfigFile(im, cf); err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(img.unpack.Ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, im); err != nil {
		t.Fatal(err)
	}
	d, _ := im.Digest()
	img.unpack.Manifest = d.String()
	if _, err := imageconv.Convert(context.Background(), img.unpack.Ref, imageconv.WithPlainHTTP(), imageconv.WithWorkDir(tempDir(t))); err != nil {
		t.Fatalf("convert: %v", err)
	}
	return registry, img
}

// agent is sluiced, the binary, run with the kernel attacher on dir.
type agent struct {
	t      testing.TB
	dir    string
	config string
	proc   *proc.Proc
	starts int
}

// sluiced is the agent binary test/vm put in the guest.
func sluiced(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(os.Getenv("SLUICE_VM_BIN"), "sluiced")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("sluiced binary (SLUICE_VM_BIN): %v", err)
	}
	return bin
}

// newAgent writes sluiced's config (the kernel table's timeout and
// dead_conn_timeout as given, 2 connections per device) and starts it.
func newAgent(t testing.TB, dir, registry, timeout, deadConn string) *agent {
	return newAgentConns(t, dir, registry, timeout, deadConn, 2)
}

// newAgentConns is newAgent with conns connections per device (0: one
// per CPU).
func newAgentConns(t testing.TB, dir, registry, timeout, deadConn string, conns int) *agent {
	t.Helper()
	cfg := fmt.Sprintf(`root = %[1]q
address = %[2]q
nbd_socket = %[3]q
metrics_address = ""
attacher = "kernel"
plain_http = [%[4]q]
credentials_file = ""
stream_min_size = "0"
[cache]
dir = %[5]q
size = "1GiB"
background_rate = "0"
[kernel]
connections = %[8]d
timeout = %[6]q
dead_conn_timeout = %[7]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "snap.sock"), filepath.Join(dir, "nbd.sock"), registry,
		filepath.Join(dir, "cache"), timeout, deadConn, conns)
	a := &agent{t: t, dir: dir, config: filepath.Join(dir, "sluiced.toml")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()
	t.Cleanup(func() {
		if a.proc != nil && a.proc.Running() {
			a.proc.Stop(10 * time.Second)
		}
	})
	return a
}

func (a *agent) logPath() string {
	return filepath.Join(a.dir, fmt.Sprintf("sluiced.%d.log", a.starts))
}

// log is the current process's log.
func (a *agent) log() string {
	b, _ := os.ReadFile(a.logPath())
	return string(b)
}

// start starts sluiced and waits until it says it is ready.
func (a *agent) start() {
	a.t.Helper()
	a.starts++
	logf, err := os.Create(a.logPath())
	if err != nil {
		a.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(sluiced(a.t), "--config", a.config)
	cmd.Stdout, cmd.Stderr = logf, logf
	if a.proc, err = proc.Start(cmd); err != nil {
		a.t.Fatal(err)
	}
	start := time.Now()
	if !waitFor(2*time.Minute, func() bool { return !a.proc.Running() || strings.Contains(a.log(), "sluiced ready") }) || !a.proc.Running() {
		a.t.Fatalf("sluiced (start %d) not ready:\n%s", a.starts, proc.LogTail(a.logPath(), 30))
	}
	a.t.Logf("sluiced start %d ready in %v", a.starts, time.Since(start).Round(time.Millisecond))
}

// kill ends sluiced with sig and waits for it.
func (a *agent) kill(sig syscall.Signal) {
	a.t.Helper()
	if err := a.proc.Cmd.Process.Signal(sig); err != nil {
		a.t.Fatal(err)
	}
	select {
	case <-a.proc.Done():
	case <-time.After(time.Minute):
		a.t.Fatalf("sluiced did not exit a minute after %v", sig)
	}
	if sig == syscall.SIGTERM {
		if code := a.proc.Cmd.ProcessState.ExitCode(); code != 0 {
			a.t.Errorf("sluiced exited with %d on SIGTERM:\n%s", code, proc.LogTail(a.logPath(), 20))
		}
	}
}

// client dials sluiced's snapshotter as containerd does.
func (a *agent) client() snapshots.Snapshotter {
	a.t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(a.dir, "snap.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { conn.Close() })
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "sluice")
}

// container is a container's snapshot mounted as a rootfs.
type container struct {
	key      string
	rootfs   string
	imageMnt string // the image mount its overlay reads from
	unmount  func()
}

// runContainer unpacks img (streamed: no layer applied) and mounts a new
// container snapshot of it.
func runContainer(t testing.TB, ctx context.Context, sn snapshots.Snapshotter, img *image, key, dir string) *container {
	t.Helper()
	applied, err := testutil.Unpack(ctx, sn, img.unpack)
	if err != nil {
		t.Fatal(err)
	}
	if applied != 0 {
		t.Fatalf("%d layers applied: the image was not streamed", applied)
	}
	mounts, err := sn.Prepare(ctx, key, img.unpack.Chain[len(img.unpack.Chain)-1])
	if err != nil {
		t.Fatal(err)
	}
	c := &container{key: key, imageMnt: lowestDir(mounts)}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c.rootfs, c.unmount = testutil.MountRootfs(t, dir, mounts)
	return c
}

// lowestDir is the last lowerdir of an overlay mount.
func lowestDir(mounts []mount.Mount) string {
	for _, m := range mounts {
		for _, o := range m.Options {
			if l, ok := strings.CutPrefix(o, "lowerdir="); ok {
				dirs := strings.Split(l, ":")
				return dirs[len(dirs)-1]
			}
		}
	}
	return ""
}
