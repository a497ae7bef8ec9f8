// Package client asks a sluice conversion service (package service, `sluice
// convert-service`) to convert images: the node agent calls Request when an
// image it pulls has no artifact, so that the next pull anywhere streams.
//
// Request never blocks and never fails the caller: requests are
// deduplicated (one per image per Remember period), sent one at a time by
// one goroutine at most Rate per second, and dropped (counted) when more
// are waiting than the backlog holds. The package imports nothing of the
// converter, so the agent links none of it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Path is where the service takes conversion requests.
const Path = "/convert"

// Request is the body of a POST to Path (application/json).
type Request struct {
	// Image names the image: REGISTRY/REPOSITORY@sha256:... (a platform
	// manifest, an index) or REGISTRY/REPOSITORY:TAG.
	Image string `json:"image"`
}

// Defaults of the options.
const (
	DefaultInterval = 200 * time.Millisecond
	DefaultRemember = 10 * time.Minute
	DefaultBacklog  = 256
	DefaultTimeout  = 10 * time.Second
)

// Client sends conversion requests to one service; see the package comment.
type Client struct {
	ctx    context.Context // New's: its logger; cancelled by Close
	cancel context.CancelFunc
	url    string
	http   *http.Client
	o      options

	queue chan string
	done  chan struct{}

	mu   sync.Mutex
	seen map[string]time.Time // image -> when it was last queued
	n    Counts
}

// Counts are the requests a Client handled, by what became of them.
type Counts struct {
	// Sent were accepted by the service; Failed were not (an error or a
	// status other than 2xx); Deduplicated were asked for again within
	// the Remember period and not sent; Dropped found the backlog full.
	Sent, Failed, Deduplicated, Dropped uint64
}

// Option configures New.
type Option func(*options)

type options struct {
	interval, remember, timeout time.Duration
	backlog                     int
	transport                   http.RoundTripper
}

// WithInterval is the least time between two requests sent (default
// DefaultInterval: at most 5 a second).
func WithInterval(d time.Duration) Option { return func(o *options) { o.interval = d } }

// WithRemember is how long a request for an image keeps another for the
// same image from being sent (default DefaultRemember). A conversion that
// failed is asked for again after it.
func WithRemember(d time.Duration) Option { return func(o *options) { o.remember = d } }

// WithBacklog bounds the requests waiting to be sent (default
// DefaultBacklog).
func WithBacklog(n int) Option { return func(o *options) { o.backlog = n } }

// WithTimeout bounds each request (default DefaultTimeout).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithTransport sends requests through rt (default http.DefaultTransport).
func WithTransport(rt http.RoundTripper) Option { return func(o *options) { o.transport = rt } }

// New returns a Client of the service at serviceURL (http[s]://host[:port],
// optionally with a path prefix) and starts its sender. ctx carries the
// logger; Close stops it.
func New(ctx context.Context, serviceURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(serviceURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("conversion service URL %q: want http[s]://host[:port]", serviceURL)
	}
	o := options{interval: DefaultInterval, remember: DefaultRemember, timeout: DefaultTimeout, backlog: DefaultBacklog}
	for _, opt := range opts {
		opt(&o)
	}
	u.Path = pathJoin(u.Path, Path)
	ctx, cancel := context.WithCancel(ctx)
	c := &Client{
		ctx: ctx, cancel: cancel, url: u.String(), o: o,
		http:  &http.Client{Timeout: o.timeout, Transport: o.transport},
		queue: make(chan string, o.backlog), done: make(chan struct{}),
		seen: map[string]time.Time{},
	}
	go c.run()
	return c, nil
}

func pathJoin(prefix, p string) string {
	for len(prefix) > 0 && prefix[len(prefix)-1] == '/' {
		prefix = prefix[:len(prefix)-1]
	}
	return prefix + p
}

// Request queues a conversion request for image unless one was queued
// within the Remember period; it never blocks.
func (c *Client) Request(image string) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.seen[image]; ok && now.Sub(t) < c.o.remember {
		c.n.Deduplicated++
		return
	}
	select {
	case c.queue <- image:
		c.seen[image] = now
		c.forget(now)
	default:
		c.n.Dropped++
		zerolog.Ctx(c.ctx).Warn().Str("image", image).Int("backlog", c.o.backlog).Msg("conversion request dropped: too many waiting")
	}
}

// forget drops what is older than the Remember period once the memory
// grows, so it stays bounded by the requests of one period. Called with
// c.mu held.
func (c *Client) forget(now time.Time) {
	if len(c.seen) < 4*c.o.backlog {
		return
	}
	for image, t := range c.seen {
		if now.Sub(t) >= c.o.remember {
			delete(c.seen, image)
		}
	}
}

// Counts returns what became of the requests so far.
func (c *Client) Counts() Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Close stops the sender; requests still waiting are not sent.
func (c *Client) Close() {
	c.cancel()
	<-c.done
}

func (c *Client) run() {
	defer close(c.done)
	log := zerolog.Ctx(c.ctx)
	var last time.Time
	for {
		var image string
		select {
		case <-c.ctx.Done():
			return
		case image = <-c.queue:
		}
		if wait := c.o.interval - time.Since(last); wait > 0 {
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		err := c.send(image)
		c.mu.Lock()
		if err != nil {
			c.n.Failed++
			// Let a later fallback of the image ask again.
			delete(c.seen, image)
		} else {
			c.n.Sent++
		}
		c.mu.Unlock()
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			log.Warn().Err(err).Str("image", image).Msg("conversion request failed")
			continue
		}
		log.Info().Str("image", image).Str("service", c.url).Msg("conversion requested")
	}
}

func (c *Client) send(image string) error {
	body, err := json.Marshal(Request{Image: image})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(c.ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", c.url, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s: %s", c.url, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
