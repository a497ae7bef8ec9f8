package registryhosts_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/sluice-project/sluice/blockcache/registryhosts"
)

// writeHosts writes root/dir/hosts.toml.
func writeHosts(t *testing.T, root, dir, content string) string {
	t.Helper()
	p := filepath.Join(root, dir, "hosts.toml")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHostsInOrder(t *testing.T) {
	root := t.TempDir()
	writeHosts(t, root, "registry.example_5000_", `
server = "https://registry.example:5000"

[host."http://127.0.0.1:30020"]
  capabilities = ["pull", "resolve"]
  [host."http://127.0.0.1:30020".header]
    x-mirror-token = "abc"

[host."https://cache.example/base"]
  capabilities = ["pull"]
  skip_verify = true
`)
	reg, _ := name.NewRegistry("registry.example:5000")
	hosts, err := registryhosts.New(root).Hosts(context.Background(), reg)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		url, registry string
		caps          registryhosts.Capabilities
		mirror        bool
	}
	all := registryhosts.Pull | registryhosts.Resolve | registryhosts.Push | registryhosts.Referrers
	wants := []want{
		{"http://127.0.0.1:30020/v2", "127.0.0.1:30020", registryhosts.Pull | registryhosts.Resolve, true},
		{"https://cache.example/base/v2", "cache.example", registryhosts.Pull, true},
		{"https://registry.example:5000/v2", "registry.example:5000", all, false},
	}
	if len(hosts) != len(wants) {
		t.Fatalf("got %d hosts, want %d: %+v", len(hosts), len(wants), hosts)
	}
	for i, w := range wants {
		h := hosts[i]
		if h.URL.String() != w.url || h.Registry.RegistryStr() != w.registry || h.Capabilities != w.caps || h.Mirror != w.mirror {
			t.Errorf("host %d: got %s (%s) caps %b mirror %t, want %+v", i, h.URL.String(), h.Registry.RegistryStr(), h.Capabilities, h.Mirror, w)
		}
	}
	if hosts[0].Registry != mustRegistry(t, "127.0.0.1:30020", name.Insecure) {
		t.Errorf("a plain HTTP mirror's registry name is not insecure")
	}
}

func mustRegistry(t *testing.T, s string, opts ...name.Option) name.Registry {
	t.Helper()
	r, err := name.NewRegistry(s, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A mirror's transport sends the API requests to its path, with its
// headers and the registry's name (ns), and leaves other hosts alone.
func TestMirrorTransport(t *testing.T) {
	type seen struct{ path, query, header string }
	got := make(chan seen, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.URL.Path, r.URL.RawQuery, r.Header.Get("X-Mirror-Token")}
	}))
	defer srv.Close()
	root := t.TempDir()
	host := strings.TrimPrefix(srv.URL, "http://")
	writeHosts(t, root, "registry.example", `
[host."`+srv.URL+`/cache"]
  capabilities = ["pull"]
  override_path = true
  header = { x-mirror-token = "abc" }
`)
	hosts, err := registryhosts.New(root).Hosts(context.Background(), mustRegistry(t, "registry.example"))
	if err != nil {
		t.Fatal(err)
	}
	m := hosts[0]
	if !m.Mirror || m.Registry.RegistryStr() != host {
		t.Fatalf("first host %+v, want the mirror %s", m, host)
	}
	cl := &http.Client{Transport: m.Transport}
	for _, tc := range []struct{ url, path, query, header string }{
		{"https://" + host + "/v2/library/busybox/blobs/sha256:00", "/cache/library/busybox/blobs/sha256:00", "ns=registry.example", "abc"},
		{"https://" + host + "/v2/", "/cache/", "", "abc"},
		// Another path of the host (a storage redirect): sent as it is.
		{srv.URL + "/storage/x?sig=1", "/storage/x", "sig=1", ""},
	} {
		resp, err := cl.Get(tc.url)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.url, err)
		}
		resp.Body.Close()
		s := <-got
		if s.path != tc.path || s.query != tc.query || s.header != tc.header {
			t.Errorf("GET %s reached %+v, want path %s query %q header %q", tc.url, s, tc.path, tc.query, tc.header)
		}
	}
}

func TestNoHostDirectory(t *testing.T) {
	root := t.TempDir()
	writeHosts(t, root, "other.example", `server = "https://other.example"`)
	for _, cfg := range []*registryhosts.Config{registryhosts.New(""), registryhosts.New(root), registryhosts.New(filepath.Join(root, "missing"))} {
		hosts, err := cfg.Hosts(context.Background(), mustRegistry(t, "registry.example"))
		if err != nil || hosts != nil {
			t.Errorf("got %v, %v; want no hosts (reach the registry directly)", hosts, err)
		}
	}
}

// docker.io's directory is docker.io (go-containerregistry says
// index.docker.io); the second root is read when the first lacks it; the
// _default directory applies to any registry.
func TestDirectoryNames(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	writeHosts(t, b, "docker.io", `[host."http://127.0.0.1:30020"]`+"\n")
	writeHosts(t, b, "_default", `[host."http://127.0.0.1:30021"]`+"\n")
	cfg := registryhosts.New(a + ":" + b)
	hosts, err := cfg.Hosts(context.Background(), name.MustParseReference("busybox").Context().Registry)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 || hosts[0].URL.Host != "127.0.0.1:30020" || hosts[1].URL.Host != "registry-1.docker.io" || hosts[1].Mirror {
		t.Errorf("docker.io: got %+v", hosts)
	}
	hosts, err = cfg.Hosts(context.Background(), mustRegistry(t, "quay.io"))
	if err != nil || len(hosts) != 2 || hosts[0].URL.Host != "127.0.0.1:30021" || hosts[1].URL.Host != "quay.io" {
		t.Errorf("_default: got %+v, %v", hosts, err)
	}
}

func TestBadConfigNamesFileAndKey(t *testing.T) {
	for _, tc := range []struct{ name, content, want string }{
		{"unknown key", `[host."http://127.0.0.1:1"]` + "\ncapabilites = [\"pull\"]\n", `unknown key host."http://127.0.0.1:1".capabilites`},
		{"capability", `[host."http://127.0.0.1:1"]` + "\ncapabilities = [\"pul\"]\n", `host."http://127.0.0.1:1".capabilities: unknown capability "pul"`},
		{"type", `[host."http://127.0.0.1:1"]` + "\nskip_verify = \"yes\"\n", `skip_verify`},
		{"header", `[host."http://127.0.0.1:1".header]` + "\nx-a = 1\n", `host."http://127.0.0.1:1".header.x-a`},
		{"ca", `ca = 3`, `ca: want a file`},
		{"server", `server = "ftp://x"`, `server: want http[s]://`},
		{"host", `[host."http://"]`, `host."http://"`},
		{"dial_timeout", `dial_timeout = "soon"`, `dial_timeout`},
		{"syntax", "server = \n", `line 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			file := writeHosts(t, root, "registry.example", tc.content)
			cfg := registryhosts.New(root)
			for _, err := range []error{
				func() error {
					_, err := cfg.Hosts(context.Background(), mustRegistry(t, "registry.example"))
					return err
				}(),
				cfg.Check(),
			} {
				if !errors.Is(err, registryhosts.ErrBadConfig) || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("got %v; want ErrBadConfig naming %s and %q", err, file, tc.want)
				}
			}
		})
	}
}

// A CA file that cannot be read fails the registry's lookups (containerd
// would fail its pulls the same way).
func TestMissingCAFile(t *testing.T) {
	root := t.TempDir()
	writeHosts(t, root, "registry.example", `[host."https://mirror.example"]`+"\nca = \"missing.crt\"\n")
	_, err := registryhosts.New(root).Hosts(context.Background(), mustRegistry(t, "registry.example"))
	if !errors.Is(err, registryhosts.ErrBadConfig) || !strings.Contains(err.Error(), "missing.crt") {
		t.Errorf("got %v; want ErrBadConfig naming missing.crt", err)
	}
}
