package blockcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/blockcache/registryhosts"
)

// RangeFetcher fetches byte ranges of one blob from a registry with HTTP
// Range requests. It authenticates with go-containerregistry's transport
// (docker config and credential helpers, bearer token challenges), follows
// redirects to blob storage without sending the registry's credentials
// there, copes with servers that ignore Range, and retries transient errors
// with backoff until the caller's context ends. It is safe for concurrent
// use.
type RangeFetcher struct {
	repo name.Repository
	blob v1.Hash
	size int64
	cfg  fetchConfig
	// endpoints are the hosts tried in order (see WithHosts).
	endpoints []*endpoint

	requests        atomic.Int64 // HTTP requests for the blob, retries included
	retries         atomic.Int64
	bytes           atomic.Int64 // body bytes read, discarded ones included
	rangeIgnored    atomic.Int64 // 200 answers to a Range request
	mirrorAnswers   atomic.Int64 // requests a mirror answered
	mirrorFallbacks atomic.Int64 // requests a mirror failed, tried on the next host

	link linkEstimate
}

// FetchStats counts what a RangeFetcher did.
type FetchStats struct {
	Requests, Retries, Bytes, RangeIgnored int64
	// MirrorAnswers counts requests a mirror answered; MirrorFallbacks
	// those a mirror failed (down, an error status, a short body), which
	// went on to the next host.
	MirrorAnswers, MirrorFallbacks int64
}

type fetchConfig struct {
	keychain     authn.Keychain
	plainHTTP    bool
	base         http.RoundTripper
	backoff      Backoff
	stallTimeout time.Duration
	userAgent    string
	maxConns     int
	hosts        []registryhosts.Host
	fillWait     time.Duration // see mirrorFillWait
}

// errStalled cancels an attempt that received nothing for the stall timeout.
var errStalled = errors.New("no data for the stall timeout")

// FetchOption configures a RangeFetcher.
type FetchOption func(*fetchConfig)

// WithKeychain resolves credentials with k (default authn.DefaultKeychain:
// the docker config and its credential helpers).
func WithKeychain(k authn.Keychain) FetchOption { return func(c *fetchConfig) { c.keychain = k } }

// WithPlainHTTP talks plain HTTP to the registry (loopback registries are
// tried over plain HTTP anyway).
func WithPlainHTTP() FetchOption { return func(c *fetchConfig) { c.plainHTTP = true } }

// WithTransport sends requests through rt (default: a clone of
// http.DefaultTransport keeping enough idle connections for the
// concurrency).
func WithTransport(rt http.RoundTripper) FetchOption { return func(c *fetchConfig) { c.base = rt } }

// WithBackoff sets the retry policy (default DefaultBackoff).
func WithBackoff(b Backoff) FetchOption { return func(c *fetchConfig) { c.backoff = b } }

// WithStallTimeout abandons and retries an attempt that receives nothing
// (no answer, no body bytes) for d, so a stalled connection is retried
// within the caller's deadline while a slow but moving one is not cut
// (default 10 s; 0: never).
func WithStallTimeout(d time.Duration) FetchOption {
	return func(c *fetchConfig) { c.stallTimeout = d }
}

// withMaxConns sizes the idle connection pool (Open sets it to the
// concurrency).
func withMaxConns(n int) FetchOption { return func(c *fetchConfig) { c.maxConns = max(n, 2) } }

// WithUserAgent sets the User-Agent (default "sluice").
func WithUserAgent(ua string) FetchOption { return func(c *fetchConfig) { c.userAgent = ua } }

// NewRangeFetcher returns a fetcher for the blob desc in repo.
func NewRangeFetcher(repo name.Repository, desc v1.Descriptor, opts ...FetchOption) *RangeFetcher {
	cfg := fetchConfig{
		keychain:     authn.DefaultKeychain,
		backoff:      DefaultBackoff,
		stallTimeout: 10 * time.Second,
		userAgent:    "sluice",
		maxConns:     8,
		fillWait:     mirrorFillWait,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.plainHTTP {
		if reg, err := name.NewRegistry(repo.RegistryStr(), name.Insecure); err == nil {
			repo.Registry = reg
		}
	}
	f := &RangeFetcher{repo: repo, blob: desc.Digest, size: desc.Size, cfg: cfg}
	f.endpoints = f.newEndpoints()
	return f
}

// Size returns the blob's size.
func (f *RangeFetcher) Size() int64 { return f.size }

// Stats returns the fetcher's counters.
func (f *RangeFetcher) Stats() FetchStats {
	return FetchStats{Requests: f.requests.Load(), Retries: f.retries.Load(), Bytes: f.bytes.Load(), RangeIgnored: f.rangeIgnored.Load(),
		MirrorAnswers: f.mirrorAnswers.Load(), MirrorFallbacks: f.mirrorFallbacks.Load()}
}

// FetchRange returns the n bytes of the blob at off, retrying transient
// errors with backoff until ctx ends or the backoff's attempts run out. A
// retry asks only for the bytes not yet had.
func (f *RangeFetcher) FetchRange(ctx context.Context, off, n int64) ([]byte, error) {
	return f.fetchRange(ctx, off, n, false)
}

// FetchRangeFromRegistry is FetchRange from the registry itself, past
// every mirror: bytes that failed verification are fetched again from
// there, so that a mirror serving wrong bytes costs a refetch, not a read.
func (f *RangeFetcher) FetchRangeFromRegistry(ctx context.Context, off, n int64) ([]byte, error) {
	return f.fetchRange(ctx, off, n, true)
}

func (f *RangeFetcher) fetchRange(ctx context.Context, off, n int64, registryOnly bool) ([]byte, error) {
	if off < 0 || n <= 0 || off > f.size-n {
		return nil, fmt.Errorf("blob %s: range [%d,+%d) outside its %d bytes", f.blob, off, n, f.size)
	}
	b := make([]byte, n)
	s, err := f.stream(ctx, off, b)
	if err != nil {
		return nil, err
	}
	s.registryOnly = registryOnly
	defer s.close()
	if err := s.fill(len(b)); err != nil {
		return nil, err
	}
	return b, nil
}

// rangeStream fills dst with the blob's bytes at off on its caller's
// goroutine, as they arrive: each next reads more, making the request, and
// any retry (for the bytes not yet had) with backoff, as it goes. The
// loader decodes a chunk by pulling its bytes through next, so they are
// decoded and hashed by the goroutine that receives them, with no hand-off
// between goroutines on the way to the waiting read; FetchRange is one
// fill.
type rangeStream struct {
	f      *RangeFetcher
	ctx    context.Context
	off    int64
	dst    []byte
	filled int

	registryOnly bool // ask the registry alone, no mirror

	attempts int   // requests made
	last     error // why the last attempt ended
	failed   error // the stream gave up: every later next returns it

	// The attempt in progress (body nil between attempts), and the host
	// answering it.
	body   io.Reader
	endTry func(err error) error
	ep     *endpoint

	// For the link estimate: when the attempt's answer came and how much
	// was had then.
	answeredAt  time.Time
	filledAtAns int
}

// stream starts filling dst with the blob's bytes at off; it sends nothing
// until the first next.
func (f *RangeFetcher) stream(ctx context.Context, off int64, dst []byte) (*rangeStream, error) {
	n := int64(len(dst))
	if off < 0 || n <= 0 || off > f.size-n {
		return nil, fmt.Errorf("blob %s: range [%d,+%d) outside its %d bytes", f.blob, off, n, f.size)
	}
	return &rangeStream{f: f, ctx: ctx, off: off, dst: dst}, nil
}

// next reads at least one more byte into dst (nothing once it is full), or
// returns why it cannot: the context ended, an error that is not
// transient, or the backoff's attempts ran out.
func (s *rangeStream) next() error {
	if s.failed != nil || s.filled == len(s.dst) {
		return s.failed
	}
	for {
		if s.body == nil {
			if s.attempts > 0 {
				if err := s.backoff(); err != nil {
					s.failed = err
					return err
				}
				s.f.retries.Add(1)
			}
			s.attempts++
			sent := time.Now()
			if err := s.open(); err != nil {
				s.last = err
				continue
			}
			s.answeredAt, s.filledAtAns = time.Now(), s.filled
			s.f.link.note(s.answeredAt.Sub(sent), 0, 0)
		}
		k, err := s.body.Read(s.dst[s.filled:])
		s.filled += k
		switch {
		case s.filled == len(s.dst):
			s.endTry(nil)
			s.body = nil
			s.f.link.note(0, int64(s.filled-s.filledAtAns), time.Since(s.answeredAt))
		case err != nil:
			s.last = s.endTry(truncated(err))
			s.body = nil
			if s.ep.mirror && s.ctx.Err() == nil {
				// Cut short by a mirror: the retry goes to the next host.
				s.ep.failed(s.last)
				s.f.mirrorFallbacks.Add(1)
			}
		}
		if k > 0 {
			return nil
		}
	}
}

// fill reads until dst[:end] is in, or returns why it cannot be.
func (s *rangeStream) fill(end int) error {
	for s.filled < end {
		if err := s.next(); err != nil {
			return err
		}
	}
	return nil
}

// section reads dst[start:end] as it arrives, pulling it in through next.
func (s *rangeStream) section(start, end int64) io.Reader {
	return &sectionReader{s: s, pos: start, end: end}
}

type sectionReader struct {
	s        *rangeStream
	pos, end int64
}

func (r *sectionReader) Read(p []byte) (int, error) {
	if r.pos >= r.end {
		return 0, io.EOF
	}
	if err := r.s.fill(int(r.pos) + 1); err != nil {
		return 0, err
	}
	n := copy(p, r.s.dst[r.pos:min(int64(r.s.filled), r.end)])
	r.pos += int64(n)
	return n, nil
}

// backoff decides whether the attempt that just failed (s.last) is
// retried, and waits before the retry; it returns why not.
func (s *rangeStream) backoff() error {
	f, ctx, err := s.f, s.ctx, s.last
	first, last := s.off, s.off+int64(len(s.dst))-1
	if ctx.Err() != nil {
		return fmt.Errorf("blob %s bytes %d-%d: %d attempts, last: %v: %w", f.blob, first, last, s.attempts, err, context.Cause(ctx))
	}
	if !transient(err) || (f.cfg.backoff.Attempts > 0 && s.attempts >= f.cfg.backoff.Attempts) {
		return fmt.Errorf("blob %s bytes %d-%d: %w", f.blob, first, last, err)
	}
	d := f.cfg.backoff.delay(s.attempts - 1)
	var se *statusError
	if errors.As(err, &se) && se.retryAfter > d {
		d = min(se.retryAfter, f.cfg.backoff.Max)
	}
	zerolog.Ctx(ctx).Debug().Err(err).Str("blob", f.blob.String()).Int64("offset", s.off).Int("attempt", s.attempts).Dur("backoff", d).Msg("retrying range fetch")
	if sleep(ctx, d) != nil {
		return fmt.Errorf("blob %s bytes %d-%d: %d attempts, last: %v: %w", f.blob, first, last, s.attempts, err, context.Cause(ctx))
	}
	return nil
}

// close ends the attempt in progress, if any.
func (s *rangeStream) close() {
	if s.body != nil {
		s.endTry(nil)
		s.body = nil
	}
}

// open makes one request for the bytes not yet had and, once its answer
// checks out, leaves its body in s.body, positioned at them. It asks the
// hosts in order (skipping mirrors that failed a moment ago), the next
// whenever one fails; the last host's failure is the attempt's.
func (s *rangeStream) open() error {
	for i, ep := range s.f.endpoints {
		last := i == len(s.f.endpoints)-1
		if !last && (s.registryOnly || ep.cooling()) {
			continue
		}
		answered, err := ep.admit(s.ctx)
		if err != nil {
			return err // the caller's context ended
		}
		if answered == nil && !last && ep.cooling() {
			continue // the mirror's first request found it filling, or down
		}
		err = s.openAt(ep, answered)
		if err == nil || last || s.ctx.Err() != nil {
			if answered != nil {
				answered()
			}
			return err
		}
		ep.failed(err)
		if answered != nil {
			answered() // after failed: the requests waiting see it cooling
		}
		s.f.mirrorFallbacks.Add(1)
		zerolog.Ctx(s.ctx).Debug().Err(err).Str("blob", s.f.blob.String()).Str("mirror", ep.repo.RegistryStr()).
			Msg("mirror failed; trying the next host")
	}
	panic("unreachable: the last endpoint returns")
}

// openAt is open's request to one host. answered, if not nil, is admit's:
// openAt calls it early when the answer is a whole blob (open calls it
// otherwise).
func (s *rangeStream) openAt(ep *endpoint, answered func()) (err error) {
	f := s.f
	off, n := s.off+int64(s.filled), int64(len(s.dst)-s.filled)
	ctx, cancel := context.WithCancelCause(s.ctx)
	var stall *time.Timer
	if f.cfg.stallTimeout > 0 {
		stall = time.AfterFunc(f.cfg.stallTimeout, func() { cancel(errStalled) })
	}
	var resp *http.Response
	// endTry closes the attempt's body and releases its context; an error
	// that came of the stall timeout says so.
	endTry := func(err error) error {
		if stall != nil {
			stall.Stop()
		}
		if resp != nil {
			resp.Body.Close()
		}
		if err != nil && context.Cause(ctx) == errStalled {
			err = fmt.Errorf("%w: %v", errStalled, err)
		}
		cancel(nil)
		return err
	}
	defer func() {
		if err != nil {
			err = endTry(err)
		}
	}()
	client, err := ep.httpClient(ctx)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", ep.repo.RegistryStr(), err)
	}
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", ep.repo.Scheme(), ep.repo.RegistryStr(), ep.repo.RepositoryStr(), f.blob)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return permanentError{err}
	}
	// A closed range, always inside the blob: some registries answer an
	// open-ended or overlong range with 416.
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	f.requests.Add(1)
	resp, err = client.Do(req)
	if err != nil {
		return err
	}
	body := &countingReader{r: resp.Body, n: &f.bytes, stall: stall, d: f.cfg.stallTimeout}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if err := checkContentRange(resp.Header.Get("Content-Range"), off, n, f.size); err != nil {
			return err
		}
	case http.StatusOK:
		// Range ignored: the body is the whole blob. Skip to off, reading
		// through a small buffer so memory stays bounded.
		f.rangeIgnored.Add(1)
		if ep.mirror {
			// Most likely a pull-through cache that lacks the blob and
			// streams it from upstream while it fills its store
			// (distribution's proxy does): every request it streams costs
			// the upstream another whole copy. Take this answer, and go
			// around the mirror for a while.
			ep.coolFor(f.cfg.fillWait)
		}
		if answered != nil {
			answered() // before skipping to off, which may take a while
		}
		if resp.ContentLength >= 0 && resp.ContentLength != f.size {
			return fmt.Errorf("200 answer of %d bytes for a %d-byte blob", resp.ContentLength, f.size)
		}
		if _, err := io.CopyN(io.Discard, body, off); err != nil {
			return fmt.Errorf("skipping to %d in a 200 answer: %w", off, truncated(err))
		}
	default:
		err := newStatusError(resp)
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096)) // reuse the connection
		return err
	}
	s.body, s.endTry, s.ep = body, endTry, ep
	if ep.mirror {
		f.mirrorAnswers.Add(1)
	}
	return nil
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("truncated body: %w", io.ErrUnexpectedEOF)
	}
	return err
}

// checkContentRange checks a 206 answer is the range asked for.
func checkContentRange(h string, off, n, size int64) error {
	var first, last int64
	var total string
	rest, ok := strings.CutPrefix(h, "bytes ")
	if ok {
		var r string
		r, total, ok = strings.Cut(rest, "/")
		if ok {
			a, b, ok2 := strings.Cut(r, "-")
			var e1, e2 error
			first, e1 = strconv.ParseInt(a, 10, 64)
			last, e2 = strconv.ParseInt(b, 10, 64)
			ok = ok2 && e1 == nil && e2 == nil
		}
	}
	if !ok || first != off || last != off+n-1 || (total != "*" && total != strconv.FormatInt(size, 10)) {
		return fmt.Errorf("206 answer with Content-Range %q, asked for bytes %d-%d/%d", h, off, off+n-1, size)
	}
	return nil
}

// countingReader counts body bytes and pushes back the stall timer.
type countingReader struct {
	r     io.Reader
	n     *atomic.Int64
	stall *time.Timer
	d     time.Duration
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n.Add(int64(n))
		if c.stall != nil {
			c.stall.Reset(c.d)
		}
	}
	return n, err
}
