package serve

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/faultproxy"
	"github.com/sluice-project/sluice/test/internal/imagebuild"
	"github.com/sluice-project/sluice/test/testutil"
)

// chunkSize is the artifact's chunk size: small, so the few MiB test image
// has enough chunks for each fault case to fault in chunks of its own.
const chunkSize = 64 << 10

// env is what every test shares: the sluice binary, the registry behind
// the fault proxy, and the converted test image with its reference ext4.
type env struct {
	base     string // temp dir of the whole run
	sluice   string // the built binary
	registry *debregistry.Registry
	proxy    *faultproxy.Proxy

	image         string // PROXY/serve:v1, as converted and served
	imageByDigest string // PROXY/serve@sha256:..., the same source image

	refPath string // the reference ext4, from `sluice export`
	ref     []byte
	index   *artifact.Index
	dataLen int64 // size of the artifact's data blob

	files map[string]string // path in the image -> hex sha256 of its content
	gone  []string          // paths a whiteout of the upper layer removed

	distinct []int // indices of non-zero chunks with distinct digests, in order
}

var (
	shared     *env
	sharedErr  error
	sharedOnce sync.Once
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.close()
	}
	os.Exit(code)
}

// getEnv sets the shared environment up on first use; the test fails,
// naming it, if a tool it needs is missing. Each test leaves the proxy in
// Pass mode.
func getEnv(t *testing.T) *env {
	t.Helper()
	testutil.Require(t, testutil.Tool(debregistry.Binary, "nbdinfo"))
	sharedOnce.Do(func() {
		start := time.Now()
		shared, sharedErr = setup()
		if sharedErr == nil {
			fmt.Fprintf(os.Stderr, "serve e2e: image %s, %d-byte ext4, %d chunks (%d distinct non-zero), %d-byte data blob; set up in %v\n",
				shared.image, len(shared.ref), len(shared.index.Chunks), len(shared.distinct), shared.dataLen, time.Since(start).Round(time.Millisecond))
		}
	})
	if sharedErr != nil {
		t.Fatalf("test environment: %v", sharedErr)
	}
	t.Cleanup(func() { shared.proxy.SetMode(faultproxy.Pass) })
	return shared
}

func setup() (_ *env, err error) {
	base, err := os.MkdirTemp("", "sluice-serve-e2e-")
	if err != nil {
		return nil, err
	}
	e := &env{base: base}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	e.sluice = filepath.Join(base, "sluice")
	build := []string{"build", "-o", e.sluice}
	if raceBuild {
		build = append(build, "-race")
	}
	if out, err := exec.Command(goTool(), append(build, "github.com/sluice-project/sluice/cmd/sluice")...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/sluice: %v\n%s", err, out)
	}
	if e.registry, err = debregistry.Start(filepath.Join(base, "registry")); err != nil {
		return nil, err
	}
	if e.proxy, err = faultproxy.New("http://" + e.registry.Addr); err != nil {
		return nil, err
	}
	e.image = e.proxy.Addr() + "/serve:v1"
	if err := e.pushImage(); err != nil {
		return nil, err
	}
	// The CLI is the contract: convert and export as a user would, through
	// the proxy, so the artifact names the proxy's host.
	if out, err := e.sluiceCmd("convert", "--plain-http", "--chunk-size", "64KiB", e.image); err != nil {
		return nil, fmt.Errorf("sluice convert: %v\n%s", err, out)
	}
	e.refPath = filepath.Join(base, "reference.ext4")
	if out, err := e.sluiceCmd("export", "--plain-http", e.image, e.refPath); err != nil {
		return nil, fmt.Errorf("sluice export: %v\n%s", err, out)
	}
	if e.ref, err = os.ReadFile(e.refPath); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	art, err := artifact.Lookup(ctx, e.image, artifact.WithPlainHTTP())
	if err != nil {
		return nil, fmt.Errorf("lookup of the converted image: %w", err)
	}
	e.index, e.dataLen = art.Index, art.Data.Size
	if e.index.ImageSize != int64(len(e.ref)) || e.index.ChunkSize != chunkSize {
		return nil, fmt.Errorf("artifact of %d bytes in %d-byte chunks; the export has %d bytes, want chunks of %d",
			e.index.ImageSize, e.index.ChunkSize, len(e.ref), chunkSize)
	}
	e.proxy.SetDataBlob(art.Data.Digest.String())
	seen := map[[32]byte]bool{}
	for i, c := range e.index.Chunks {
		if !c.Zero() && !seen[c.Digest] {
			seen[c.Digest] = true
			e.distinct = append(e.distinct, i)
		}
	}
	return e, nil
}

func (e *env) close() {
	if e.proxy != nil {
		e.proxy.Close()
	}
	if e.registry != nil {
		e.registry.Stop()
	}
	os.RemoveAll(e.base)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// sluiceCmd runs the sluice binary to completion and returns its combined
// output.
func (e *env) sluiceCmd(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, e.sluice, args...).CombinedOutput()
}

// pushImage builds the two-layer test image and pushes it through the
// proxy. Its content is varied on purpose: incompressible and compressible
// data, a file of zeros (all-zero chunks), two identical files (shared
// chunks), many small files, a file replaced and one deleted by the upper
// layer.
func (e *env) pushImage() error {
	e.files = map[string]string{}
	rng := rand.NewChaCha8([32]byte{'s', 'l', 'u', 'i', 'c', 'e'})
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rng.Read(b)
		return b
	}
	text := func(seed, lines int) []byte {
		var b bytes.Buffer
		for i := range lines {
			fmt.Fprintf(&b, "%06d file %d: the quick brown fox %d jumps over the lazy dog %x\n", i, seed, i*7+seed, i*i+seed)
		}
		return b.Bytes()
	}
	mode := func(m int64) imagebuild.Meta {
		return imagebuild.Meta{Mode: m, ModTime: time.Unix(1_700_000_000, 0)}
	}
	add := func(l *imagebuild.Layer, p string, content []byte) {
		l.File(p, content, mode(0o644))
		sum := sha256.Sum256(content)
		e.files[p] = hex.EncodeToString(sum[:])
	}

	b := imagebuild.New()
	base := b.Layer()
	add(base, "usr/lib/big-random.bin", random(3<<20+12345))
	dup := random(256 << 10)
	add(base, "usr/lib/dup-a.bin", dup)
	add(base, "usr/lib/dup-b.bin", dup)
	add(base, "opt/zeros.bin", make([]byte, 1<<20))
	for i := range 12 {
		add(base, fmt.Sprintf("usr/share/doc/text-%d.txt", i), text(i, 400+i*150))
	}
	upper := b.Layer()
	add(upper, "app/payload.bin", random(3<<20-777))
	add(upper, "app/config.json", []byte(`{"name": "serve-e2e", "layers": 2}`+"\n"))
	for i := range 150 {
		add(upper, fmt.Sprintf("app/small/%03d.dat", i), random(512+i*53))
	}
	add(upper, "usr/share/doc/text-3.txt", text(1003, 900)) // replaces the lower layer's
	upper.Whiteout("usr/share/doc/text-5.txt")
	delete(e.files, "usr/share/doc/text-5.txt")
	e.gone = []string{"usr/share/doc/text-5.txt"}

	var gz [][]byte
	for _, l := range []*imagebuild.Layer{base, upper} {
		g, err := l.Gzip()
		if err != nil {
			return err
		}
		gz = append(gz, g)
	}
	img, err := imagebuild.Image(gz...)
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(e.image, name.Insecure)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s: %w", e.image, err)
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	e.imageByDigest = ref.Context().Name() + "@" + d.String()
	return nil
}

// chunkOff is where chunk i starts in the image.
func (e *env) chunkOff(i int) int64 { return int64(i) * e.index.ChunkSize }

// refSum is the hex sha256 of the reference bytes [off, off+n).
func (e *env) refSum(off, n int64) string {
	s := sha256.Sum256(e.ref[off : off+n])
	return hex.EncodeToString(s[:])
}

// chunkPicker hands out chunks with distinct digests, each once, so every
// read it is used for is a cache miss on a fresh server.
type chunkPicker struct {
	e    *env
	used map[int]bool
}

func (e *env) picker() *chunkPicker { return &chunkPicker{e: e, used: map[int]bool{}} }

// next returns the lowest chunk left.
func (p *chunkPicker) next(t *testing.T) int {
	t.Helper()
	return p.where(t, "any", false, func(int) bool { return true })
}

// last returns the highest chunk left.
func (p *chunkPicker) last(t *testing.T) int {
	t.Helper()
	return p.where(t, "any", true, func(int) bool { return true })
}

// incompressible returns the lowest chunk left that zstd could not shrink
// (stored as raw blocks).
func (p *chunkPicker) incompressible(t *testing.T) int {
	t.Helper()
	return p.where(t, "incompressible", false, func(i int) bool {
		return int64(p.e.index.Chunks[i].Length) >= p.e.index.ChunkLen(i)
	})
}

func (p *chunkPicker) where(t *testing.T, what string, fromEnd bool, ok func(int) bool) int {
	t.Helper()
	d := p.e.distinct
	for k := range d {
		i := d[k]
		if fromEnd {
			i = d[len(d)-1-k]
		}
		if !p.used[i] && ok(i) {
			p.used[i] = true
			return i
		}
	}
	t.Fatalf("the test image has no %s chunk left for this test", what)
	return 0
}

// compareWithRef fails the test unless got is the reference ext4, naming
// the first chunk that differs.
func (e *env) compareWithRef(t *testing.T, what string, got []byte) {
	t.Helper()
	if bytes.Equal(got, e.ref) {
		return
	}
	if len(got) != len(e.ref) {
		t.Errorf("%s: %d bytes, the reference ext4 has %d", what, len(got), len(e.ref))
	}
	n := min(len(got), len(e.ref))
	for off := 0; off < n; off++ {
		if got[off] != e.ref[off] {
			t.Errorf("%s differs from the reference ext4 first at byte %d (chunk %d)", what, off, int64(off)/e.index.ChunkSize)
			return
		}
	}
}

// run runs a command with a deadline and returns its stdout; stderr is in
// the error. Debian's python3-libnbd is for /usr/bin/python3, which nbdsh
// must find first even where another python3 leads PATH.
func run(t *testing.T, timeout time.Duration, name string, args ...string) ([]byte, error) {
	t.Helper()
	return runErr(timeout, name, args...)
}

// runErr is run for use outside the test's goroutine.
func runErr(timeout time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = toolEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, lastLines(stderr.String(), 20))
	}
	return out, nil
}

func mustRun(t *testing.T, timeout time.Duration, name string, args ...string) []byte {
	t.Helper()
	out, err := run(t, timeout, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func toolEnv() []string { return append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH")) }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// shortTempDir makes a temp dir with a short path (unix socket paths are
// limited to 107 bytes), removed when the test ends.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "slc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return d
}

// syncBuffer is a bytes.Buffer a subprocess writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
