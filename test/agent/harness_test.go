package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/testutil"
)

// env is what every test shares: the built binaries, the registry and the
// images in it.
type env struct {
	base     string
	sluice   string // built cmd/sluice
	sluiced  string // built cmd/sluiced
	registry *debregistry.Registry
	images   map[string]*testImage
	sandbox  string // docker archive of the sandbox image

	// artifactBlobs are the blobs of A's sluice artifact (index, data,
	// config), which a streamed pull may fetch.
	artifactBlobs map[string]bool
	// tamperedIndex is the corrupt index blob of Tampered's artifact.
	tamperedIndex string
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

// needed are the commands the tests run.
var needed = []string{debregistry.Binary, containerdtest.Binary, "ctr", "runc", "containerd-shim-runc-v2",
	"umoci", "chroot", "nbdfuse", "nbdkit", "nbdinfo", "losetup", "fusermount3"}

// getEnv sets the shared environment up on first use; the test fails,
// naming what is missing, unless it runs as root (containerd, mounts, loop
// devices, FUSE) with the commands it needs.
func getEnv(t *testing.T) *env {
	t.Helper()
	testutil.Require(t, testutil.Root, testutil.Tool(needed...), testutil.Check("crictl", func() error {
		_, err := containerdtest.CrictlPath()
		return err
	}))
	sharedOnce.Do(func() {
		start := time.Now()
		shared, sharedErr = setup()
		if sharedErr == nil {
			fmt.Fprintf(os.Stderr, "agent e2e: registry %s, %d images, set up in %v\n",
				shared.registry.Addr, len(shared.images), time.Since(start).Round(time.Millisecond))
		}
	})
	if sharedErr != nil {
		t.Fatalf("test environment: %v", sharedErr)
	}
	return shared
}

func setup() (_ *env, err error) {
	base, err := os.MkdirTemp("", "sluice-agent-e2e-")
	if err != nil {
		return nil, err
	}
	e := &env{base: base}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e.sluice, e.sluiced = filepath.Join(base, "sluice"), filepath.Join(base, "sluiced")
	if err := build(ctx, e.sluice, "github.com/sluice-project/sluice/cmd/sluice"); err != nil {
		return nil, err
	}
	if err := build(ctx, e.sluiced, "github.com/sluice-project/sluice/cmd/sluiced"); err != nil {
		return nil, err
	}
	if e.registry, err = debregistry.Start(filepath.Join(base, "registry"), debregistry.WithAccessLog()); err != nil {
		return nil, err
	}
	if e.images, err = buildImages(ctx, e.registry.Addr, filepath.Join(base, "images")); err != nil {
		return nil, err
	}
	// The CLI is the contract: convert as a user would.
	if out, err := e.run(ctx, e.sluice, "convert", "--plain-http", e.images[repoA].ref); err != nil {
		return nil, fmt.Errorf("sluice convert: %v\n%s", err, out)
	}
	art, err := artifact.Lookup(ctx, e.images[repoA].ref, artifact.WithPlainHTTP())
	if err != nil {
		return nil, fmt.Errorf("artifact of the converted image: %w", err)
	}
	e.artifactBlobs = map[string]bool{art.Data.Digest.String(): true}
	raw, err := e.artifactManifest(ctx, repoA, art.Descriptor.Digest)
	if err != nil {
		return nil, err
	}
	for _, l := range append(raw.Layers, raw.Config) {
		e.artifactBlobs[l.Digest.String()] = true
	}
	if err := e.tamper(ctx, raw); err != nil {
		return nil, fmt.Errorf("tampered artifact: %w", err)
	}
	e.sandbox = filepath.Join(base, "sandbox.tar")
	if err := sandboxArchive(e.sandbox); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	if e.registry != nil {
		e.registry.Stop()
	}
	os.RemoveAll(e.base)
}

// build compiles a command of this module (with -race under go test -race).
func build(ctx context.Context, out, pkg string) error {
	args := []string{"build", "-o", out}
	if raceBuild {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, goTool(), append(args, pkg)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// run runs a command to completion and returns its combined output.
func (e *env) run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, bin, args...).CombinedOutput()
}

// artifactManifest fetches and decodes an artifact manifest.
func (e *env) artifactManifest(ctx context.Context, repo string, d v1.Hash) (*v1.Manifest, error) {
	ref, err := name.ParseReference(e.registry.Addr+"/"+repo+"@"+d.String(), name.Insecure)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(ref, remote.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	return v1.ParseManifest(bytes.NewReader(desc.Manifest))
}

// tamper gives the Tampered image a copy of A's artifact whose index blob
// is cut short (a well-formed blob with the right digest, but no valid
// index), pushed as go-containerregistry pushes any referrer.
func (e *env) tamper(ctx context.Context, m *v1.Manifest) error {
	ti := e.images[repoTampered]
	repo, err := name.NewRepository(e.registry.Addr+"/"+repoTampered, name.Insecure)
	if err != nil {
		return err
	}
	srcRepo, err := name.NewRepository(e.registry.Addr+"/"+repoA, name.Insecure)
	if err != nil {
		return err
	}
	ropts := []remote.Option{remote.WithContext(ctx)}
	out := *m
	out.Layers = nil
	for _, l := range append(m.Layers, m.Config) {
		src, err := remote.Layer(srcRepo.Digest(l.Digest.String()), ropts...)
		if err != nil {
			return err
		}
		if l.MediaType == artifact.IndexMediaType {
			rc, err := src.Compressed()
			if err != nil {
				return err
			}
			b := make([]byte, l.Size/2)
			_, err = io.ReadFull(rc, b)
			rc.Close()
			if err != nil {
				return err
			}
			bad := static.NewLayer(b, l.MediaType)
			d, _ := bad.Digest()
			e.tamperedIndex = d.String()
			l.Digest, l.Size = d, int64(len(b))
			src = bad
		}
		if err := remote.WriteLayer(repo, src, ropts...); err != nil {
			return err
		}
		if l.Digest != m.Config.Digest {
			out.Layers = append(out.Layers, l)
		}
	}
	subject, err := remote.Head(repo.Tag("v1"), ropts...)
	if err != nil {
		return err
	}
	out.Subject = &v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	if subject.Digest.String() != ti.digest {
		return fmt.Errorf("tampered image is %s in the registry, %s as built", subject.Digest, ti.digest)
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return err
	}
	d, _, err := v1.SHA256(strings.NewReader(string(raw)))
	if err != nil {
		return err
	}
	return remote.Put(repo.Digest(d.String()), rawManifest(raw), ropts...)
}

type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
