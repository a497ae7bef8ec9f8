package convertsvc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-project/sluice/imageconv/artifact/signature"
	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/proc"
	"github.com/sluice-project/sluice/test/testutil"
)

// env is what the tests share.
type env struct {
	base    string
	sluice  string // built cmd/sluice
	sluiced string // built cmd/sluiced
	// key and pub are the service's key pair (the private key's password
	// is keyPassword); nodes trust pub.
	key, pub string
	// notifying sends its push notifications to svc; plain sends none.
	notifying, plain *debregistry.Registry
	svc              *service
}

const keyPassword = "convert-service-test"

// Bounds of the shared service: small enough that the tests reach them.
const (
	maxParallel  = 2
	maxImageSize = 12 << 20
)

// repos are the repositories the shared service converts.
var repos = []string{"push/**", "pull/**", "burst/**", "bad/**"}

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
var needed = []string{debregistry.Binary, "skopeo", containerdtest.Binary, "ctr", "runc", "containerd-shim-runc-v2",
	"nbdfuse", "nbdkit", "nbdinfo", "losetup", "fusermount3"}

// getEnv sets the shared environment up on first use; the test fails,
// naming what is missing, unless it runs as root with the commands it
// needs.
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
			fmt.Fprintf(os.Stderr, "convertsvc e2e: service %s, registries %s (notifying) and %s, set up in %v\n",
				shared.svc.addr, shared.notifying.Addr, shared.plain.Addr, time.Since(start).Round(time.Millisecond))
		}
	})
	if sharedErr != nil {
		t.Fatalf("test environment: %v", sharedErr)
	}
	return shared
}

func setup() (_ *env, err error) {
	base, err := os.MkdirTemp("", "sluice-convertsvc-e2e-")
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
	priv, pub, err := signature.GenerateKey([]byte(keyPassword))
	if err != nil {
		return nil, err
	}
	e.key, e.pub = filepath.Join(base, "service.key"), filepath.Join(base, "service.pub")
	if err := os.WriteFile(e.key, priv, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(e.pub, pub, 0o644); err != nil {
		return nil, err
	}
	if e.svc, err = e.startService(filepath.Join(base, "service"), "--repos", strings.Join(repos, ",")); err != nil {
		return nil, err
	}
	snippet, err := notificationSnippet("http://" + e.svc.addr + "/events")
	if err != nil {
		return nil, err
	}
	if e.notifying, err = debregistry.Start(filepath.Join(base, "notifying"), debregistry.WithAccessLog(), debregistry.WithNotifications(snippet)); err != nil {
		return nil, err
	}
	if e.plain, err = debregistry.Start(filepath.Join(base, "plain"), debregistry.WithAccessLog()); err != nil {
		return nil, err
	}
	return e, nil
}

// notificationSnippet is scripts/convert-service's registry snippet, as
// shipped, sending to url.
func notificationSnippet(url string) (string, error) {
	b, err := os.ReadFile("../../scripts/convert-service/registry-notifications.yml")
	if err != nil {
		return "", err
	}
	const shipped = "http://sluice-convert.sluice.svc:8080/events"
	if !strings.Contains(string(b), shipped) {
		return "", fmt.Errorf("registry-notifications.yml no longer sends to %s", shipped)
	}
	return strings.ReplaceAll(string(b), shipped, url), nil
}

func (e *env) close() {
	if e.svc != nil {
		e.svc.stop()
	}
	for _, r := range []*debregistry.Registry{e.notifying, e.plain} {
		if r != nil {
			r.Stop()
		}
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
func run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, bin, args...).CombinedOutput()
}

// startRegistry starts a docker-registry of the test's own and stops it
// when the test ends.
func startRegistry(t *testing.T, opts ...debregistry.Option) *debregistry.Registry {
	t.Helper()
	reg, err := debregistry.Start(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	return reg
}

var errTimeout = fmt.Errorf("timed out")

// waitFor polls cond every 100 ms until it is true or d passes.
func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

var _ = proc.FreePort
