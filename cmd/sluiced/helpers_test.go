package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/testutil"
	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// tempDir is a short directory under /tmp (unix socket paths are short),
// cleaned up with whatever is still mounted, attached or running under it.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluiced-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		leakcheck.Sweep(dir)
		os.RemoveAll(dir)
	})
	return dir
}

// assertNoLeaks fails if mounts, loop devices or processes (nbdfuse,
// nbdkit) referring to dir remain (processes get a few seconds to exit).
func assertNoLeaks(t *testing.T, dir string) {
	t.Helper()
	var left leakcheck.Leaks
	for deadline := time.Now().Add(5 * time.Second); ; {
		var err error
		if left, err = leakcheck.Find(dir); err != nil {
			t.Fatal(err)
		}
		if left.Empty() || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !left.Empty() {
		t.Errorf("left behind:\n%s", left)
	}
}

// logBuffer collects an agent's log lines for assertions and mirrors them
// to the test's log.
type logBuffer struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(p)
	l.mu.Unlock()
	l.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// testRegistry is an in-process registry with the referrers API; wrap, if
// not nil, wraps its handler (authentication, faults).
type testRegistry struct {
	srv  *httptest.Server
	host string
}

func newTestRegistry(t *testing.T, wrap func(http.Handler) http.Handler) *testRegistry {
	t.Helper()
	h := testutil.NewRegistry()
	if wrap != nil {
		h = wrap(h)
	}
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return &testRegistry{srv: s, host: strings.TrimPrefix(s.URL, "http://")}
}

// testImage is an image pushed to a test registry, with what containerd
// knows of it when unpacking.
type testImage struct {
	ref      string // host/repo:tag
	manifest string // platform manifest digest
	layers   []string
	chain    []string
	blobs    [][]byte          // compressed layers, bottom first
	files    map[string]string // expected rootfs content of regular files
}

// pushImage pushes an image of the layers to reg as repo:tag.
func pushImage(t *testing.T, reg *testRegistry, repoTag string, keychain authn.Keychain, specs ...testutil.LayerSpec) *testImage {
	t.Helper()
	img := &testImage{ref: reg.host + "/" + repoTag, files: map[string]string{}}
	var layers []v1.Layer
	var diffIDs []digest.Digest
	for _, spec := range specs {
		b := testutil.LayerBlob(t, spec)
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		d, _ := l.Digest()
		diff, _ := l.DiffID()
		img.blobs = append(img.blobs, b)
		img.layers = append(img.layers, d.String())
		diffIDs = append(diffIDs, digest.Digest(diff.String()))
		layers = append(layers, l)
		for p, c := range spec {
			switch {
			case c == testutil.Whiteout:
				delete(img.files, p)
			case !strings.HasSuffix(p, "/"):
				img.files[p] = c
			}
		}
	}
	for _, c := range identity.ChainIDs(diffIDs) {
		img.chain = append(img.chain, c.String())
	}
	im, err := mutate.AppendLayers(empty.Image, layers...)
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
	ref, err := name.ParseReference(img.ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if keychain == nil {
		keychain = authn.DefaultKeychain
	}
	if err := remote.Write(ref, im, remote.WithAuthFromKeychain(keychain)); err != nil {
		t.Fatal(err)
	}
	d, _ := im.Digest()
	img.manifest = d.String()
	return img
}

// convert makes img's sluice artifact.
func convert(t *testing.T, img *testImage, opts ...imageconv.Option) v1.Hash {
	t.Helper()
	rs, err := imageconv.Convert(context.Background(), img.ref,
		append([]imageconv.Option{imageconv.WithPlainHTTP(), imageconv.WithWorkDir(t.TempDir())}, opts...)...)
	if err != nil || len(rs) != 1 {
		t.Fatalf("convert %s: %v (%d results)", img.ref, err, len(rs))
	}
	return rs[0].Artifact
}

// pushCorruptArtifact gives img an artifact whose index blob is garbage.
func pushCorruptArtifact(t *testing.T, reg *testRegistry, img *testImage) {
	t.Helper()
	ref, err := name.ParseReference(img.ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	repo := ref.Context()
	blob := func(b []byte, mt types.MediaType) v1.Descriptor {
		l := static.NewLayer(b, mt)
		if err := remote.WriteLayer(repo, l); err != nil {
			t.Fatal(err)
		}
		d, _ := l.Digest()
		return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}
	}
	// As imageconv does: the config's media type is the artifact type.
	cfg := blob([]byte("{}"), artifact.ArtifactType)
	index := blob(bytes.Repeat([]byte("not an index "), 40), artifact.IndexMediaType)
	data := blob(bytes.Repeat([]byte{7}, 4096), artifact.DataMediaType)
	subject, err := v1.NewHash(img.manifest)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  artifact.ArtifactType,
		"config":        cfg,
		"layers":        []v1.Descriptor{index, data},
		"subject":       v1.Descriptor{MediaType: desc.MediaType, Digest: subject, Size: desc.Size},
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(repo.Digest(digest.FromBytes(raw).String()), rawManifest(raw)); err != nil {
		t.Fatal(err)
	}
}

type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// testAgent is an agent started in-process on temporary directories.
type testAgent struct {
	*agent
	cfg  Config
	logs *logBuffer
	dir  string
}

// startTestAgent starts an agent; edit changes the config first.
func startTestAgent(t *testing.T, dir string, edit func(*Config)) (*testAgent, error) {
	t.Helper()
	cfg := defaultConfig()
	cfg.Root = filepath.Join(dir, "root")
	cfg.Address = filepath.Join(dir, "snap.sock")
	cfg.NBDSocket = filepath.Join(dir, "nbd.sock")
	cfg.MetricsAddress = "127.0.0.1:0"
	cfg.CredentialsFile = ""
	cfg.Cache.Dir = filepath.Join(dir, "cache")
	cfg.Cache.Size = "256MiB"
	cfg.Cache.BackgroundRate = "0"
	cfg.StreamMinSize = "0" // the test images are a few KiB: stream them
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	logs := &logBuffer{t: t}
	ctx := zerolog.New(logs).Level(zerolog.DebugLevel).With().Timestamp().Logger().WithContext(context.Background())
	a, err := startAgent(ctx, cfg)
	if err != nil {
		return nil, err
	}
	ta := &testAgent{agent: a, cfg: cfg, logs: logs, dir: dir}
	t.Cleanup(func() { a.close() })
	return ta, nil
}

func mustStartAgent(t *testing.T, dir string, edit func(*Config)) *testAgent {
	t.Helper()
	a, err := startTestAgent(t, dir, edit)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// client dials the agent's snapshotter the way containerd does.
func (a *testAgent) client(t *testing.T) snapshots.Snapshotter {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+a.cfg.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "sluice")
}

// metrics scrapes /metrics.
func (a *testAgent) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + a.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// metric returns the value of one sample line of /metrics ("name{labels}"),
// or -1 when it is absent.
func (a *testAgent) metric(t *testing.T, sample string) float64 {
	t.Helper()
	for _, line := range strings.Split(a.metrics(t), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("metric %s: %q", sample, v)
			}
			return f
		}
	}
	return -1
}

// unpack unpacks img through sn as containerd's CRI unpacker does; it
// returns how many layers were applied (downloaded).
func unpack(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, img *testImage) (applied int, err error) {
	t.Helper()
	return testutil.Unpack(ctx, sn, img.unpackImage())
}

// withUnpackLabels gives layer i's Prepare the labels a CRI unpack sets.
func withUnpackLabels(img *testImage, i int) snapshots.Opt {
	return snapshots.WithLabels(img.unpackImage().Labels(i))
}

func (img *testImage) unpackImage() testutil.UnpackImage {
	return testutil.UnpackImage{Ref: img.ref, Manifest: img.manifest, Layers: img.layers, Chain: img.chain, Blobs: img.blobs}
}

// checkRootfs mounts a container snapshot and compares its regular files
// with want; it also writes a file, as a container would.
func checkRootfs(t *testing.T, ctx context.Context, mounts []mount.Mount, want map[string]string) {
	t.Helper()
	target, unmount := testutil.MountRootfs(t, tempDir(t), mounts)
	defer unmount()
	got := map[string]string{}
	err := filepath.WalkDir(target, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(target, p)
		if d.IsDir() && rel == "lost+found" {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			got[rel] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, c := range want {
		if got[p] != c {
			t.Errorf("rootfs %s: got %.40q, want %.40q", p, got[p], c)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("rootfs has %s, which the image has not", p)
		}
	}
	if err := os.WriteFile(filepath.Join(target, "written-by-container"), []byte("x"), 0o644); err != nil {
		t.Errorf("writing in the container's rootfs: %v", err)
	}
}

// basicAuth wraps a registry handler with HTTP basic authentication.
func basicAuth(user, pass string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}`, http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

// staticKeychain gives one authenticator for every registry.
type staticKeychain struct{ auth authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }

// errorContains fails unless err's message holds every part.
func errorContains(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", what)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not say %q", what, err, p)
		}
	}
}

func imageconvKeychain(k authn.Keychain) imageconv.Option { return imageconv.WithKeychain(k) }
