package blockcache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/sluice-project/sluice/blockcache/registryhosts"
)

// WithHosts fetches from these hosts (package registryhosts: containerd's
// hosts.toml for the registry) instead of the registry alone: those with
// the pull capability, in order, the next one whenever one is down,
// answers with an error status (404 included) or cuts a body short, so a
// read never fails because of a mirror while another host has the blob.
// A mirror that failed otherwise than with 404 is skipped for
// mirrorCooldown, and one that answered a range with the whole blob (a
// pull-through cache filling it) for mirrorFillWait. Credentials are
// resolved for each host's own name. No hosts (nil): the registry alone,
// as without this option.
func WithHosts(hosts []registryhosts.Host) FetchOption {
	return func(c *fetchConfig) { c.hosts = hosts }
}

// mirrorCooldown is how long a mirror that failed is skipped: a stalled
// one would otherwise cost every request the stall timeout.
const mirrorCooldown = 30 * time.Second

// mirrorFillWait is how long a mirror that answered a range with the whole
// blob is skipped: long enough for a pull-through cache to store a blob
// it is filling, short enough that its store serves most of an image.
// Eight nodes reading an image at once through distribution 2.8's cache,
// without this, made the origin send 3.5 and 3.9 times (two runs) the
// bytes they made it send directly (test/fleet): the cache streamed the
// blob whole again for each of their requests while it filled.
const mirrorFillWait = 2 * time.Second

// endpoint is one host of the blob: a mirror or the registry.
type endpoint struct {
	f         *RangeFetcher
	repo      name.Repository
	transport http.RoundTripper // nil: a clone of http.DefaultTransport
	mirror    bool

	mu        sync.Mutex
	init      *clientInit // the client, built on first use so opening needs no network
	coolUntil time.Time
	// A mirror's first request (and its first after each cooldown) finds
	// out alone whether it serves the blob's ranges; the requests that
	// come meanwhile wait for its answer (probe closes) instead of each
	// costing a filling cache's upstream a whole copy.
	probe  chan struct{}
	probed bool
}

// clientInit is the authenticating client being built (the registry ping
// and token exchange), shared by the requests that wait for it.
type clientInit struct {
	done   chan struct{}
	client *http.Client
	err    error
}

// endpoints are the hosts f tries, in order: WithHosts' that can pull,
// else the registry alone.
func (f *RangeFetcher) newEndpoints() []*endpoint {
	var eps []*endpoint
	for _, h := range f.cfg.hosts {
		if !h.Capabilities.Has(registryhosts.Pull) {
			continue
		}
		ep := &endpoint{f: f, repo: f.repo, transport: cmp.Or(h.Transport, f.cfg.base), mirror: h.Mirror}
		if h.Mirror {
			ep.repo = h.Registry.Repo(f.repo.RepositoryStr())
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		eps = append(eps, &endpoint{f: f, repo: f.repo, transport: f.cfg.base})
	}
	return eps
}

// cooling reports whether the endpoint failed a moment ago.
func (ep *endpoint) cooling() bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return time.Now().Before(ep.coolUntil)
}

// failed notes that a request to the endpoint failed with err: unless the
// host just lacks the blob (404), skip it for a while.
func (ep *endpoint) failed(err error) {
	var se *statusError
	if errors.As(err, &se) && se.code == http.StatusNotFound {
		return
	}
	ep.coolFor(mirrorCooldown)
}

// coolFor skips the endpoint for d from now (or longer, if it already
// was); the first request after that is a probe again.
func (ep *endpoint) coolFor(d time.Duration) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if until := time.Now().Add(d); until.After(ep.coolUntil) {
		ep.coolUntil = until
	}
	ep.probed = false
}

// admit lets a request go to the endpoint. For a mirror not yet probed,
// the first request goes at once, and admit returns the func it calls
// once the mirror's answer is known; the others wait for that (or for
// their ctx to end). The registry itself is never held back.
func (ep *endpoint) admit(ctx context.Context) (answered func(), err error) {
	if !ep.mirror {
		return nil, nil
	}
	ep.mu.Lock()
	if ep.probed {
		ep.mu.Unlock()
		return nil, nil
	}
	if ep.probe == nil {
		ch := make(chan struct{})
		ep.probe = ch
		ep.mu.Unlock()
		var once sync.Once
		return func() {
			once.Do(func() {
				ep.mu.Lock()
				// Probed, unless the answer made it cool down: then the
				// first request after that probes again.
				ep.probed, ep.probe = !time.Now().Before(ep.coolUntil), nil
				ep.mu.Unlock()
				close(ch)
			})
		}, nil
	}
	ch := ep.probe
	ep.mu.Unlock()
	select {
	case <-ch:
		return nil, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// httpClient returns the authenticating client, building it on first use
// (one build at a time, each waiter bounded by its own ctx); a failure
// (registry down) is retried by the caller like any transient error.
func (ep *endpoint) httpClient(ctx context.Context) (*http.Client, error) {
	in := ep.startInit(ctx)
	select {
	case <-in.done:
		return in.client, in.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// Warm builds the client of the first host (the first mirror, or the
// registry) in the background: the registry ping, the token exchange and
// the TCP connection the ping leaves in the idle pool are then done before
// the first fault needs them, instead of adding their round trips to it.
// It returns at once and never fails; if the host cannot be reached now,
// the first fetch tries again.
func (f *RangeFetcher) Warm(ctx context.Context) { f.endpoints[0].startInit(ctx) }

// startInit returns the client build in progress or done, starting one if
// there is none or the last one failed.
func (ep *endpoint) startInit(ctx context.Context) *clientInit {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	in := ep.init
	if in == nil || (isClosed(in.done) && in.err != nil) {
		in = &clientInit{done: make(chan struct{})}
		ep.init = in
		// Not bound to this caller's attempt: the others wait for it too.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cmp.Or(ep.f.cfg.stallTimeout, 30*time.Second))
		go func() {
			defer cancel()
			in.client, in.err = ep.newClient(bctx)
			close(in.done)
		}()
	}
	return in
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (ep *endpoint) newClient(ctx context.Context) (*http.Client, error) {
	cfg := ep.f.cfg
	auth, err := authn.Resolve(ctx, cfg.keychain, ep.repo)
	if err != nil {
		return nil, permanentError{fmt.Errorf("resolving credentials: %w", err)}
	}
	base := ep.transport
	if base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = cfg.maxConns
		base = t
	}
	base = transport.NewUserAgent(base, cfg.userAgent)
	rt, err := transport.NewWithContext(ctx, ep.repo.Registry, auth, base, []string{ep.repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	registryHost := ep.repo.RegistryStr()
	return &http.Client{
		Transport: rt,
		// ggcr's transport only adds credentials for the registry's own
		// host, and net/http drops them on cross-domain redirects; also drop
		// them for another port of the same host (a storage service).
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			if req.URL.Host != registryHost {
				req.Header.Del("Authorization")
			}
			return nil
		},
	}, nil
}
