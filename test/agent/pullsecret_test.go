package agent

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/imagebuild"
	"github.com/sluice-project/sluice/test/internal/tokenauth"
)

// The users of the private registry: a pull secret, and the one it is
// rotated to.
const (
	aliceCreds = "alice:alice-Pull-Secret-1"
	bobCreds   = "bob:bob-Pull-Secret-2"
)

// privateRegistry is Debian's docker-registry with htpasswd
// authentication, behind a token proxy (test/internal/tokenauth) whose
// bearer tokens the test expires when it chooses.
type privateRegistry struct {
	reg     *debregistry.Registry
	a, solo *testImage // as pushed to reg (see front)
}

// tokenFront is a token proxy of the test's own in front of the private
// registry, and the images named at its address.
type tokenFront struct {
	tok  *tokenauth.Server
	addr string     // the registry's address for clients
	a    *testImage // A, converted
	solo *testImage // a one-layer image sharing nothing with A, converted
}

// front starts a token proxy in front of pr, stopped when the test ends.
func (pr *privateRegistry) front(t *testing.T) *tokenFront {
	t.Helper()
	tok, err := tokenauth.Start("http://"+pr.reg.Addr, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tok.Close)
	rename := func(ti *testImage) *testImage {
		c := *ti
		c.ref = tok.Addr + strings.TrimPrefix(ti.ref, pr.reg.Addr)
		return &c
	}
	return &tokenFront{tok: tok, addr: tok.Addr, a: rename(pr.a), solo: rename(pr.solo)}
}

// newPrivateRegistry pushes and converts the images while the registry
// is open, then restarts it with htpasswd authentication.
func newPrivateRegistry(t *testing.T, e *env) *privateRegistry {
	t.Helper()
	dir := t.TempDir()
	reg := startRegistry(t, filepath.Join(dir, "registry"), debregistry.WithAccessLog())
	pr := &privateRegistry{}
	a := e.pushConverted(t, e.images[repoA], reg.Addr+"/private/a:v1")
	l := imagebuild.New().Layer()
	l.Dir("solo", meta(0o755))
	l.File("solo/text.txt", []byte("an image of its own, to be pulled the ordinary way\n"), meta(0o644))
	gz, err := l.Gzip()
	if err != nil {
		t.Fatal(err)
	}
	img, err := newImage([][]byte{gz}, "/solo/none")
	if err != nil {
		t.Fatal(err)
	}
	solo, err := describe(img, "")
	if err != nil {
		t.Fatal(err)
	}
	solo = e.pushConverted(t, solo, reg.Addr+"/private/solo:v1")
	reg.Stop()

	var htpasswd strings.Builder
	for _, c := range []string{aliceCreds, bobCreds} {
		user, pass, _ := strings.Cut(c, ":")
		hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&htpasswd, "%s:%s\n", user, hash)
	}
	hp := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(hp, []byte(htpasswd.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	pr.reg = startRegistry(t, filepath.Join(dir, "registry"), debregistry.WithAccessLog(), debregistry.WithAddr(reg.Addr), debregistry.WithHtpasswd(hp))
	pr.a, pr.solo = a, solo
	return pr
}

// mark returns the number of requests the registry has answered so far.
func (pr *privateRegistry) mark(t *testing.T) int {
	t.Helper()
	reqs, err := pr.reg.Requests(0)
	if err != nil {
		t.Fatal(err)
	}
	return len(reqs)
}

// blobGETs returns how many times each blob was GET from the registry
// since mark, and the new mark.
func (pr *privateRegistry) blobGETs(t *testing.T, mark int) (map[string]int, int) {
	t.Helper()
	return blobGETsOf(t, pr.reg, mark)
}

// TestCRIPullSecrets: with containerd 1.6 and 2.x, pulls through sluiced's
// CRI image service proxy bring a private registry's credentials (as
// kubelet brings a pull secret) to sluiced:
//   - without credentials the pull fails, naming the registry and saying
//     it denied access; a pull that reaches containerd with credentials
//     but not sluiced (the proxy bypassed) falls back, with the reason
//     "registry denied access" naming the registry;
//   - `crictl pull --creds` through the proxy streams: no layer blob GET,
//     the image mounted;
//   - the secret is rotated (a pull with the new one, the old one revoked)
//     and every bearer token expires while a container runs: sluiced
//     fetches a new token with the last credentials it saw, and the
//     container reads every file of its image;
//   - no credential reaches sluiced's log, a file it wrote, or /metrics.
func TestCRIPullSecrets(t *testing.T) {
	e := getEnv(t)
	pr := newPrivateRegistry(t, e)
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		f := pr.front(t)
		// No background fetch: what the container reads after the tokens
		// expire is fetched then.
		n := newNode(t, e, nodeOpts{containerd: ctrd, registries: []string{f.addr}, criKeychain: true, backgroundRate: "0"})
		viaProxy := func(args ...string) (string, error) {
			out, err := n.containerd.CrictlVia(context.Background(), n.agent.criSocket, args...)
			return strings.TrimSpace(string(out)), err
		}
		a := f.a

		// Without credentials: containerd is refused, and says by whom.
		_, err := viaProxy("pull", a.ref)
		if err == nil {
			t.Fatal("a pull without credentials succeeded")
		}
		for _, want := range []string{f.addr, "401 Unauthorized"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("the pull without credentials failed with %q, which does not say %q", err, want)
			}
		}
		// containerd has credentials, sluiced has not: the ordinary pull.
		if _, err := n.containerd.Crictl(context.Background(), "pull", "--creds", aliceCreds, f.solo.ref); err != nil {
			t.Fatalf("pull bypassing the proxy: %v", err)
		}
		if v := n.labelled(`sluice_fallbacks_total{reason="registry denied access"}`); v != 1 {
			t.Errorf(`sluice_fallbacks_total{reason="registry denied access"} = %v after a pull sluiced had no credentials for, want 1`, v)
		}
		if !logNames(n.agent.log(), f.solo.ref, `"reason":"registry denied access"`, "registry "+f.addr, "pulling it the ordinary way") {
			t.Errorf("sluiced's log has no fallback line for %s naming the reason and the registry:\n%s", f.solo.ref, n.agent.logTail(30))
		}

		// Through the proxy, with credentials: streamed.
		start := pr.mark(t)
		if out, err := viaProxy("pull", "--creds", aliceCreds, a.ref); err != nil {
			t.Fatalf("pull with credentials through the proxy: %v\n%s", err, out)
		}
		pulled, _ := pr.blobGETs(t, start)
		for _, l := range a.layers {
			if pulled[l] > 0 {
				t.Errorf("the pull through the proxy downloaded layer blob %s", l)
			}
		}
		if v := n.metric("sluice_placeholders_total"); v < float64(len(a.layers)) {
			t.Errorf("sluice_placeholders_total = %v after pulling %d layers", v, len(a.layers))
		}
		pod, podCfg := n.runPod("secret")
		id := n.createContainer(pod, podCfg, "reader", a.ref, "/bin/sleep", "3600")
		n.crictl("start", id)
		if got := n.crictl("exec", id, "/bin/cat", "/app/name"); got != "image A" {
			t.Fatalf("the container read %q from /app/name", got)
		}
		if v := n.metric("sluice_image_mounts"); v != 1 {
			t.Errorf("sluice_image_mounts = %v with a container running, want 1", v)
		}

		// The secret rotates: kubelet pulls with the new one, the old one
		// is revoked, and every token expires under the running container.
		if out, err := viaProxy("pull", "--creds", bobCreds, a.ref); err != nil {
			t.Fatalf("pull with the rotated credentials: %v\n%s", err, out)
		}
		f.tok.Revoke("alice")
		fetched := n.metric("sluice_fetched_bytes_total")
		expiredAt := time.Now()
		expired := f.tok.Expired()
		f.tok.ExpireAll()
		out, err := n.containerd.Crictl(context.Background(), "exec", id, "/bin/sh", "-c", listScript)
		if err != nil {
			t.Fatalf("the running container after its tokens expired: %v", err)
		}
		got, err := parseListing(string(out))
		if err != nil {
			t.Fatal(err)
		}
		if d := a.listing.diff(got, 30); len(d) > 0 {
			t.Errorf("the running container's root filesystem after the tokens expired differs from the reference:\n%s", strings.Join(d, "\n"))
		}
		if v := n.metric("sluice_fetched_bytes_total"); v <= fetched {
			t.Errorf("sluice_fetched_bytes_total %v, %v before the tokens expired: the reads fetched nothing", v, fetched)
		}
		if f.tok.Expired() == expired {
			t.Error("no request came with an expired token: the reads did not go to the registry")
		}
		var after []string
		for _, is := range f.tok.Issued() {
			if is.At.After(expiredAt) {
				after = append(after, is.User)
			}
		}
		if len(after) == 0 || strings.Join(after, ",") != strings.Repeat("bob,", len(after)-1)+"bob" {
			t.Errorf("tokens issued after the expiry went to %v, want bob's (the last credentials) only", after)
		}
		if v := n.labelled(`sluice_read_errors_total`); v != 0 {
			t.Errorf("sluice_read_errors_total = %v", v)
		}

		checkNoSecrets(t, n, aliceCreds, bobCreds)
	})
}

// checkNoSecrets fails the test if a password of creds (user:password),
// or its base64 form, is in sluiced's log, /metrics or a file below its
// dir (image mounts excluded).
func checkNoSecrets(t *testing.T, n *node, creds ...string) {
	t.Helper()
	var secrets []string
	for _, c := range creds {
		_, pass, _ := strings.Cut(c, ":")
		secrets = append(secrets, pass, base64.StdEncoding.EncodeToString([]byte(c)))
	}
	resp, err := http.Get("http://" + n.agent.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(n.agent.config)
	var top syscall.Stat_t
	if err := syscall.Stat(dir, &top); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"/metrics": string(metrics)}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		if d.IsDir() && st.Dev != top.Dev {
			return filepath.SkipDir // an image mount or nbdfuse's file system
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			files[p] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("found only %d files to check below %s", len(files), dir)
	}
	for f, content := range files {
		for _, s := range secrets {
			if strings.Contains(content, s) {
				t.Errorf("%s holds a secret (%.6s...)", f, s)
			}
		}
	}
}
