package client

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// service records the requests it gets; status answers them.
type service struct {
	mu     sync.Mutex
	images []string
	status int
	block  chan struct{} // if set, each request waits for it
}

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/prefix"+Path || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad request line", http.StatusBadRequest)
		return
	}
	var req Request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if s.block != nil {
		<-s.block
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.images = append(s.images, req.Image)
	if s.status != 0 {
		w.WriteHeader(s.status)
	}
}

func (s *service) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.images...)
}

func newClient(t *testing.T, h http.Handler, opts ...Option) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := New(context.Background(), srv.URL+"/prefix/", append([]Option{WithInterval(time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func waitCounts(t *testing.T, c *Client, done func(Counts) bool) Counts {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := c.Counts()
		if done(n) {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("counts %+v", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRequestsAreDeduplicated(t *testing.T) {
	s := &service{}
	c := newClient(t, s)
	for range 3 {
		c.Request("r.example/app@sha256:1")
	}
	c.Request("r.example/app@sha256:2")
	n := waitCounts(t, c, func(n Counts) bool { return n.Sent+n.Failed == 2 })
	if n != (Counts{Sent: 2, Deduplicated: 2}) {
		t.Errorf("counts %+v, want 2 sent, 2 deduplicated", n)
	}
	if got := s.got(); len(got) != 2 || got[0] != "r.example/app@sha256:1" || got[1] != "r.example/app@sha256:2" {
		t.Errorf("service got %q", got)
	}
}

// TestFailedRequestIsAskedAgain: a request the service refuses is
// counted, and the next fallback of the image asks again.
func TestFailedRequestIsAskedAgain(t *testing.T) {
	s := &service{status: http.StatusServiceUnavailable}
	c := newClient(t, s)
	c.Request("r.example/app@sha256:1")
	waitCounts(t, c, func(n Counts) bool { return n.Failed == 1 })
	c.Request("r.example/app@sha256:1")
	n := waitCounts(t, c, func(n Counts) bool { return n.Failed == 2 })
	if n.Deduplicated != 0 || n.Sent != 0 {
		t.Errorf("counts %+v", n)
	}
}

// TestRequestNeverBlocks: with the service stuck, requests beyond the
// backlog are dropped at once, not waited for.
func TestRequestNeverBlocks(t *testing.T) {
	s := &service{block: make(chan struct{})}
	c := newClient(t, s, WithBacklog(2), WithTimeout(time.Minute))
	queued := make(chan struct{})
	go func() {
		for i := range 10 {
			c.Request("r.example/app:" + string(rune('a'+i)))
		}
		close(queued)
	}()
	// The service answers nothing until the requests are all made: a
	// Request that waited for it would never return.
	select {
	case <-queued:
	case <-time.After(time.Minute):
		t.Fatal("Request blocked while the service was stuck")
	}
	close(s.block)
	// One is being sent, two wait, the others are dropped (the sender may
	// have taken the first before or after the second was queued).
	n := waitCounts(t, c, func(n Counts) bool { return n.Sent+n.Failed+n.Dropped == 10 })
	if n.Dropped < 7 || n.Dropped > 8 {
		t.Errorf("counts %+v, want 7 or 8 dropped", n)
	}
}

func TestNewRefusesBadURL(t *testing.T) {
	for _, u := range []string{"", "example.com:8080", "ftp://x", "http://"} {
		if _, err := New(context.Background(), u); err == nil {
			t.Errorf("New(%q) accepted it", u)
		}
	}
}
