package registryhosts

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	dconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	clog "github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sirupsen/logrus"
)

// Capabilities are what a host may be asked for.
type Capabilities uint8

const (
	// Pull: blobs and manifests by digest.
	Pull Capabilities = 1 << iota
	// Resolve: manifests by tag.
	Resolve
	// Push: uploads (never used by sluice).
	Push
	// Referrers: the referrers API (GET /v2/NAME/referrers/DIGEST).
	Referrers
)

// Has reports whether c includes all of want.
func (c Capabilities) Has(want Capabilities) bool { return c&want == want }

// Host is one host of a registry's repositories.
type Host struct {
	// Registry names the host for credentials and for the requests sent
	// through Transport: the registry's own name for the registry itself,
	// the host's host[:port] for a mirror (name.Insecure over plain HTTP).
	Registry name.Registry
	// URL is the host's API root: scheme, host[:port] and path (/v2
	// unless override_path says otherwise).
	URL url.URL
	// Capabilities say what the host may be asked for.
	Capabilities Capabilities
	// Mirror is true for a host other than the registry itself: its
	// requests carry the registry's name (?ns=REGISTRY), as containerd's
	// do, so that a mirror serving several registries knows which.
	Mirror bool
	// Transport reaches the host: requests for Registry go to URL's
	// scheme, host and path, with the host's headers and TLS settings.
	Transport http.RoundTripper
}

// Config reads the host configuration of config_path: one or more
// directories (separated by ':', the first holding a registry's directory
// wins). Files are read at each Hosts call, so edits apply to the next
// lookup, as in containerd.
type Config struct {
	roots    []string
	maxConns int
}

// Option configures New.
type Option func(*Config)

// WithMaxIdleConnsPerHost keeps n idle connections per host (default 8:
// chunk fetches run concurrently).
func WithMaxIdleConnsPerHost(n int) Option { return func(c *Config) { c.maxConns = max(n, 2) } }

// New reads configPath, containerd's registry config_path ("" or a
// directory that does not exist: no host configured, every registry is
// reached directly).
func New(configPath string, opts ...Option) *Config {
	c := &Config{maxConns: 8}
	for _, r := range strings.Split(configPath, string(os.PathListSeparator)) {
		if r != "" {
			c.roots = append(c.roots, r)
		}
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// quiet swallows containerd's loader's log lines.
var quiet = func() *logrus.Entry {
	l := logrus.New()
	l.Out = io.Discard
	return logrus.NewEntry(l)
}()

// ErrBadConfig is the error of a malformed hosts.toml or a host that
// cannot be set up (an unreadable CA file).
var ErrBadConfig = errors.New("bad registry host configuration")

// dir returns registry's host directory, "" if none is configured.
func (c *Config) dir(registry string) (string, error) {
	for _, root := range c.roots {
		dir, err := dconfig.HostDirFromRoot(root)(registry)
		if err == nil {
			return dir, nil
		}
		if !errdefs.IsNotFound(err) {
			return "", fmt.Errorf("host directory of %s under %s: %w", registry, root, err)
		}
	}
	return "", nil
}

// Hosts returns the hosts of reg in the order to try them (the mirrors,
// then the registry or hosts.toml's server), or nil if config_path has
// nothing for reg (reach it directly, as without this package). A
// malformed hosts.toml is an error wrapping ErrBadConfig that names the
// file and the key.
func (c *Config) Hosts(ctx context.Context, reg name.Registry) ([]Host, error) {
	registry := containerdName(reg.RegistryStr())
	dir, err := c.dir(registry)
	if err != nil || dir == "" {
		return nil, err
	}
	file := filepath.Join(dir, "hosts.toml")
	if err := CheckFile(file); err != nil {
		return nil, err
	}
	// containerd's loader logs through logrus (notes such as "host will
	// try HTTPS first"): not into sluiced's JSON log.
	hosts, err := dconfig.ConfigureHosts(clog.WithLogger(ctx, quiet), dconfig.HostOptions{
		HostDir: func(string) (string, error) { return dir, nil },
		UpdateClient: func(cl *http.Client) error {
			if t, ok := cl.Transport.(*http.Transport); ok {
				t.MaxIdleConnsPerHost = c.maxConns
			}
			return nil
		},
	})(registry)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadConfig, dir, err)
	}
	out := make([]Host, 0, len(hosts))
	for _, h := range hosts {
		host := Host{
			URL:          url.URL{Scheme: h.Scheme, Host: h.Host, Path: h.Path},
			Capabilities: capabilities(h.Capabilities),
			Mirror:       isMirror(registry, h.Host),
		}
		if host.Mirror {
			var nopts []name.Option
			if h.Scheme == "http" {
				nopts = append(nopts, name.Insecure)
			}
			if host.Registry, err = name.NewRegistry(h.Host, nopts...); err != nil {
				return nil, fmt.Errorf("%w: %s: host %q: %w", ErrBadConfig, file, h.Host, err)
			}
		} else {
			host.Registry = reg
		}
		host.Transport = &hostTransport{
			next: h.Client.Transport, from: host.Registry.RegistryStr(), to: host.URL,
			header: h.Header, ns: nsOf(host.Mirror, registry),
		}
		out = append(out, host)
	}
	return out, nil
}

func nsOf(mirror bool, registry string) string {
	if mirror {
		return registry
	}
	return ""
}

// containerdName is a registry's name as containerd's host directories
// name it: go-containerregistry's index.docker.io is docker.io.
func containerdName(registry string) string {
	if registry == name.DefaultRegistry {
		return "docker.io"
	}
	return registry
}

// isMirror is containerd's test of a host being a proxy of registry.
func isMirror(registry, host string) bool {
	return host != registry && (registry != "docker.io" || host != "registry-1.docker.io")
}

// hostTransport sends the requests made for one host's name to where the
// host configuration says it is.
type hostTransport struct {
	next   http.RoundTripper
	from   string // the host[:port] requests are made for
	to     url.URL
	header http.Header
	ns     string // the registry's name, for a mirror
}

func (t *hostTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// Only the host's own API: a redirect elsewhere (blob storage) goes
	// as it is.
	if req.URL.Host != t.from || (req.URL.Path != "/v2" && !strings.HasPrefix(req.URL.Path, "/v2/")) {
		return t.next.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	r.URL.Scheme, r.URL.Host = t.to.Scheme, t.to.Host
	r.Host = ""
	r.URL.Path = t.to.Path + strings.TrimPrefix(req.URL.Path, "/v2")
	r.URL.RawPath = ""
	if t.ns != "" && r.URL.Path != t.to.Path && r.URL.Path != t.to.Path+"/" {
		q := r.URL.Query()
		q.Set("ns", t.ns)
		r.URL.RawQuery = q.Encode()
	}
	for k, vs := range t.header {
		if r.Header.Get(k) == "" {
			r.Header[http.CanonicalHeaderKey(k)] = vs
		}
	}
	return t.next.RoundTrip(r)
}

// capabilities converts containerd's capabilities.
func capabilities(c docker.HostCapabilities) Capabilities {
	var out Capabilities
	for from, to := range map[docker.HostCapabilities]Capabilities{
		docker.HostCapabilityPull: Pull, docker.HostCapabilityResolve: Resolve,
		docker.HostCapabilityPush: Push, docker.HostCapabilityReferrers: Referrers,
	} {
		if c.Has(from) {
			out |= to
		}
	}
	return out
}
