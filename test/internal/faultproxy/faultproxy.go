// Package faultproxy is a reverse proxy for end-to-end tests that sits
// between a registry client and a real registry and injects the faults
// real registries show: being down, answering 5xx, being slow, sending
// wrong bytes, and ignoring HTTP Range requests.
//
// Terms: the data blob is the one blob whose ranged reads the faults that
// corrupt or reshape bodies apply to (SetDataBlob); a data request is a
// GET of it. Faults that make the registry unreachable (Down, Unavailable,
// Slow) apply to every request.
package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is what the proxy does to the requests it gets.
type Mode int32

const (
	// Pass forwards every request unchanged.
	Pass Mode = iota
	// Down closes every connection as soon as a request arrives, without an
	// answer: the registry is unreachable.
	Down
	// Unavailable answers every request 503 Service Unavailable.
	Unavailable
	// Slow waits the delay set with SetDelay before forwarding a request.
	Slow
	// FlipBit flips one bit in the middle of the body of every ranged data
	// request answered 206 (see FlipNext to flip only some).
	FlipBit
	// IgnoreRange drops the Range header of data requests, so the registry
	// answers 200 with the whole blob.
	IgnoreRange
	// Cut sends the first half of the body of every data answer, then
	// closes the connection: the registry dies mid-answer.
	Cut
	// ForgeContent changes ranged data answers that hold a stored (raw)
	// zstd block into valid zstd frames with a bit of their content
	// flipped: they decompress, checksum included, to the right length
	// and the wrong bytes, so only a digest of the content catches them.
	ForgeContent
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case Down:
		return "down"
	case Unavailable:
		return "unavailable"
	case Slow:
		return "slow"
	case FlipBit:
		return "flip-bit"
	case IgnoreRange:
		return "ignore-range"
	case Cut:
		return "cut"
	case ForgeContent:
		return "forge-content"
	}
	return "mode(?)"
}

// Stats counts what the proxy saw and did.
type Stats struct {
	Requests     int64 // every request that reached the proxy
	DataRequests int64 // GETs of the data blob
	DataBytes    int64 // body bytes of data blob answers sent to the client
	Refused      int64 // requests answered by closing the connection or 503
	Delayed      int64 // requests held back in Slow mode
	Flipped      int64 // data answers with a flipped bit
	RangeDropped int64 // data requests whose Range header was dropped
	Cut          int64 // data answers cut off mid-body
	Forged       int64 // data answers whose content was forged
}

// Proxy is a fault-injecting reverse proxy on a 127.0.0.1 port.
type Proxy struct {
	srv  *httptest.Server
	rp   *httputil.ReverseProxy
	mode atomic.Int32

	delay     atomic.Int64 // nanoseconds, for Slow
	flipsLeft atomic.Int64 // FlipBit: answers still to flip; < 0: all

	mu       sync.Mutex
	dataBlob string // "sha256:..."; empty: every blob

	requests, dataRequests, dataBytes, refused, delayed, flipped, rangeDropped, cut, forged atomic.Int64
}

type ctxKey struct{}

// reqInfo is decided once per request, so a mode change mid-request does
// not mix two behaviours in one answer.
type reqInfo struct {
	mode Mode
	data bool
}

// New starts a proxy in Pass mode in front of target, e.g.
// "http://127.0.0.1:5000". The Host header is passed on unchanged, so a
// registry builds its upload URLs for the proxy's address.
func New(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	p := &Proxy{}
	p.flipsLeft.Store(-1)
	p.rp = httputil.NewSingleHostReverseProxy(u)
	p.rp.ErrorLog = log.New(io.Discard, "", 0)
	p.rp.ModifyResponse = p.modifyResponse
	p.rp.Transport = &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serveHTTP))
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	p.srv.Start()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

// Close stops the proxy.
func (p *Proxy) Close() {
	p.srv.CloseClientConnections()
	p.srv.Close()
}

// SetMode switches the fault; it applies to requests that arrive from now
// on.
func (p *Proxy) SetMode(m Mode) {
	if m == FlipBit {
		p.flipsLeft.Store(-1)
	}
	p.mode.Store(int32(m))
}

// Mode returns the current fault.
func (p *Proxy) Mode() Mode { return Mode(p.mode.Load()) }

// FlipNext flips a bit in the next n ranged data answers, then passes
// answers unchanged.
func (p *Proxy) FlipNext(n int64) {
	p.flipsLeft.Store(n)
	p.mode.Store(int32(FlipBit))
}

// SetDelay sets how long Slow mode holds each request.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// SetDataBlob names the blob ("sha256:<hex>") that FlipBit and IgnoreRange
// apply to and that DataRequests and DataBytes count.
func (p *Proxy) SetDataBlob(digest string) {
	p.mu.Lock()
	p.dataBlob = digest
	p.mu.Unlock()
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Requests: p.requests.Load(), DataRequests: p.dataRequests.Load(), DataBytes: p.dataBytes.Load(),
		Refused: p.refused.Load(), Delayed: p.delayed.Load(), Flipped: p.flipped.Load(),
		RangeDropped: p.rangeDropped.Load(), Cut: p.cut.Load(),
		Forged: p.forged.Load(),
	}
}

// isData reports whether r is a GET of the data blob.
func (p *Proxy) isData(r *http.Request) bool {
	if r.Method != http.MethodGet {
		return false
	}
	i := strings.LastIndex(r.URL.Path, "/blobs/")
	if !strings.HasPrefix(r.URL.Path, "/v2/") || i < 0 {
		return false
	}
	p.mu.Lock()
	want := p.dataBlob
	p.mu.Unlock()
	return want == "" || r.URL.Path[i+len("/blobs/"):] == want
}

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p.requests.Add(1)
	info := &reqInfo{mode: p.Mode(), data: p.isData(r)}
	if info.data {
		p.dataRequests.Add(1)
	}
	switch info.mode {
	case Down:
		p.refused.Add(1)
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
				return
			}
		}
		panic(http.ErrAbortHandler) // closes the connection too
	case Unavailable:
		p.refused.Add(1)
		http.Error(w, "injected fault: registry unavailable", http.StatusServiceUnavailable)
		return
	case Slow:
		p.delayed.Add(1)
		t := time.NewTimer(time.Duration(p.delay.Load()))
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	case IgnoreRange:
		if info.data && r.Header.Get("Range") != "" {
			p.rangeDropped.Add(1)
			r.Header.Del("Range")
		}
	}
	r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, info))
	p.rp.ServeHTTP(w, r)
}

func (p *Proxy) modifyResponse(resp *http.Response) error {
	info, _ := resp.Request.Context().Value(ctxKey{}).(*reqInfo)
	if info == nil || !info.data {
		return nil
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, n: &p.dataBytes}
	if info.mode == FlipBit && resp.StatusCode == http.StatusPartialContent && resp.ContentLength > 0 && p.takeFlip() {
		p.flipped.Add(1)
		resp.Body = &flipBody{ReadCloser: resp.Body, at: resp.ContentLength / 2}
	}
	if info.mode == ForgeContent && resp.StatusCode == http.StatusPartialContent && resp.ContentLength > 0 {
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxForged))
		resp.Body.Close()
		if err != nil {
			return err
		}
		if ok, err := forgeFrames(b); err == nil && ok {
			p.forged.Add(1)
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
	}
	if info.mode == Cut && resp.ContentLength > 1 {
		p.cut.Add(1)
		resp.Body = &cutBody{ReadCloser: resp.Body, left: resp.ContentLength / 2}
	}
	return nil
}

// maxForged bounds the answers ForgeContent holds in memory.
const maxForged = 64 << 20

// takeFlip uses up one flip of the budget FlipNext set, if any.
func (p *Proxy) takeFlip() bool {
	for {
		n := p.flipsLeft.Load()
		if n < 0 {
			return true
		}
		if n == 0 {
			return false
		}
		if p.flipsLeft.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// flipBody inverts the lowest bit of the byte at offset at.
type flipBody struct {
	io.ReadCloser
	at, pos int64
}

func (f *flipBody) Read(b []byte) (int, error) {
	n, err := f.ReadCloser.Read(b)
	if f.at >= f.pos && f.at < f.pos+int64(n) {
		b[f.at-f.pos] ^= 1
	}
	f.pos += int64(n)
	return n, err
}

// cutBody ends with an error after left bytes, which makes the
// ReverseProxy abort the answer and close the client's connection.
type cutBody struct {
	io.ReadCloser
	left int64
}

var errCut = errors.New("injected fault: answer cut off")

func (c *cutBody) Read(b []byte) (int, error) {
	if c.left <= 0 {
		return 0, errCut
	}
	if int64(len(b)) > c.left {
		b = b[:c.left]
	}
	n, err := c.ReadCloser.Read(b)
	c.left -= int64(n)
	return n, err
}
