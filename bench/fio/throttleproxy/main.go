// Command throttleproxy makes a local registry look remote: it is an HTTP
// reverse proxy that delays every request by a fixed round-trip time, before
// the response headers, and sends response bodies through one shared
// bandwidth limit. It counts the bytes of blob bodies it serves (GET
// /v2/NAME/blobs/DIGEST), in total and per digest, so a benchmark can tell
// what a client fetched.
//
//	throttleproxy --listen 127.0.0.1:5001 --upstream http://127.0.0.1:5000 --rtt 5ms --bandwidth 100MB
//
// GET /_stats answers the counters as JSON (not delayed, not throttled);
// they are also printed to stdout on SIGINT or SIGTERM. The client's Host
// header is kept, so URLs the registry builds (upload locations) name the
// proxy and pushes through it work too.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"

	"github.com/sluice-project/sluice/bench/fio/internal/serve"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: any free port; see --addr-file)")
	upstream := flag.String("upstream", "", "registry to forward to, e.g. http://127.0.0.1:5000 (required)")
	rtt := flag.Duration("rtt", 5*time.Millisecond, "delay added once per request, before the response headers")
	bandwidth := flag.String("bandwidth", "100MB", "response body bandwidth per second shared by all requests: 100MB (decimal), 100MiB (binary); 0: unlimited")
	addrFile := flag.String("addr-file", "", "write the address listened on (host:port) to this file once ready")
	flag.Parse()

	if err := run(*listen, *upstream, *rtt, *bandwidth, *addrFile); err != nil {
		fmt.Fprintln(os.Stderr, "throttleproxy:", err)
		os.Exit(1)
	}
}

func run(listen, upstream string, rtt time.Duration, bandwidth, addrFile string) error {
	if upstream == "" {
		return errors.New("--upstream is required")
	}
	up, err := url.Parse(upstream)
	if err != nil || up.Scheme == "" || up.Host == "" {
		return fmt.Errorf("--upstream %q: want a URL such as http://127.0.0.1:5000", upstream)
	}
	if rtt < 0 {
		return fmt.Errorf("--rtt %s: negative", rtt)
	}
	bw, err := parseSize(bandwidth)
	if err != nil {
		return fmt.Errorf("--bandwidth: %w", err)
	}

	p := newProxy(up, rtt, newPacer(bw))
	l, err := serve.Listen(listen, addrFile)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "throttleproxy: %s -> %s, rtt %s, bandwidth %s/s\n", l.Addr(), up, rtt, bandwidth)
	if err := serve.UntilSignal(l, p); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(p.stats.snapshot())
}

// proxy is the throttling reverse proxy plus its /_stats endpoint.
type proxy struct {
	rp    *httputil.ReverseProxy
	rtt   time.Duration
	pace  *pacer
	stats *stats
}

func newProxy(upstream *url.URL, rtt time.Duration, pace *pacer) *proxy {
	p := &proxy{rtt: rtt, pace: pace, stats: newStats()}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Host = r.In.Host
		},
		Transport:      t,
		FlushInterval:  -1, // paced pieces go out as they are released
		ModifyResponse: p.wrapBody,
	}
	return p
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/_stats" {
		p.serveStats(w, r)
		return
	}
	if p.rtt > 0 {
		sleepUntil(time.Now().Add(p.rtt))
	}
	p.stats.request()
	p.rp.ServeHTTP(w, r)
}

func (p *proxy) wrapBody(resp *http.Response) error {
	digest := ""
	if resp.Request.Method == http.MethodGet && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent) {
		digest = blobDigest(resp.Request.URL.Path)
	}
	resp.Body = &pacedBody{rc: resp.Body, pace: p.pace, count: p.stats.counter(digest)}
	return nil
}

func (p *proxy) serveStats(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(p.stats.snapshot())
}
