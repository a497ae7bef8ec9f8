// Package tokenauth puts registry token authentication (the Docker
// registry token protocol: a 401 challenge naming a token endpoint, a
// token for Basic credentials, the token as a Bearer header) in front of
// a registry, for end-to-end tests of bearer tokens that expire.
//
// Debian's docker-registry (distribution 2.8) speaks that protocol only
// with an external token server whose JWTs it verifies against an x509
// chain; its htpasswd authentication is Basic. This proxy is the smallest
// real-enough token setup: it serves the token endpoint at the registry's
// own address (go-containerregistry refuses a token realm on another
// loopback port), asks the registry itself (htpasswd) whether a user's
// credentials are good before issuing a token, and forwards requests
// carrying a live token to the registry with those credentials. Its
// tokens are opaque and last TTL, or until ExpireAll: a test expires them
// at the moment it chooses, and clients must fetch new ones with the
// credentials they hold then. Revoke stops issuing tokens to a user, as a
// rotated secret does.
package tokenauth

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Server is a running token proxy.
type Server struct {
	// Addr is its host:port on 127.0.0.1: the registry's address for
	// clients.
	Addr string

	upstream *url.URL
	ttl      time.Duration
	srv      *http.Server
	fwd      *httputil.ReverseProxy

	mu      sync.Mutex
	tokens  map[string]grant
	issued  []Issue
	revoked map[string]bool
	expired int
}

// grant is what a token stands for.
type grant struct {
	user, password string
	expires        time.Time
}

// Issue is one token issued.
type Issue struct {
	User string
	At   time.Time
}

// Start serves a token proxy in front of the registry at upstream
// (http://host:port) on a free 127.0.0.1 port; its tokens last ttl.
func Start(upstream string, ttl time.Duration) (*Server, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: l.Addr().String(), upstream: u, ttl: ttl, tokens: map[string]grant{}, revoked: map[string]bool{}}
	s.fwd = httputil.NewSingleHostReverseProxy(u)
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(l)
	return s, nil
}

// Close stops serving.
func (s *Server) Close() { s.srv.Close() }

// Revoke issues no more tokens to user (those issued stay valid until
// they expire).
func (s *Server) Revoke(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked[user] = true
}

// ExpireAll ends every token issued so far.
func (s *Server) ExpireAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, g := range s.tokens {
		g.expires = time.Time{}
		s.tokens[t] = g
	}
}

// Issued returns the tokens issued so far, oldest first.
func (s *Server) Issued() []Issue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Issue(nil), s.issued...)
}

// Expired returns how many requests were refused for an expired token.
func (s *Server) Expired() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expired
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		s.token(w, r)
		return
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	g, known := s.tokens[tok]
	live := ok && known && time.Now().Before(g.expires)
	if ok && known && !live {
		s.expired++
	}
	s.mu.Unlock()
	if !live {
		s.challenge(w, r, ok && known)
		return
	}
	r.SetBasicAuth(g.user, g.password)
	s.fwd.ServeHTTP(w, r)
}

// challenge answers 401 with the Bearer challenge for r's repository.
func (s *Server) challenge(w http.ResponseWriter, r *http.Request, expired bool) {
	c := fmt.Sprintf(`Bearer realm="http://%s/token",service="sluice-test"`, s.Addr)
	if repo := repository(r.URL.Path); repo != "" {
		c += fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
	}
	if expired {
		c += `,error="invalid_token"`
	}
	w.Header().Set("WWW-Authenticate", c)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
}

// repository is the repository of a /v2/REPO/(manifests|blobs|tags|referrers)/... path.
func repository(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	for _, kind := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		if i := strings.LastIndex(rest, kind); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

// token issues a token for good Basic credentials (GET, as
// go-containerregistry and containerd without a password ask) or a
// password grant (POST, containerd's OAuth form).
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	user, password, ok := r.BasicAuth()
	if r.Method == http.MethodPost {
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "password" {
			http.Error(w, `{"error":"unsupported_grant_type"}`, http.StatusBadRequest)
			return
		}
		user, password, ok = r.PostForm.Get("username"), r.PostForm.Get("password"), true
	}
	s.mu.Lock()
	revoked := s.revoked[user]
	s.mu.Unlock()
	if !ok || revoked || !s.upstreamAccepts(r, user, password) {
		w.Header().Set("WWW-Authenticate", `Basic realm="sluice-test"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
		return
	}
	b := make([]byte, 16)
	rand.Read(b)
	tok := hex.EncodeToString(b)
	now := time.Now()
	s.mu.Lock()
	s.tokens[tok] = grant{user: user, password: password, expires: now.Add(s.ttl)}
	s.issued = append(s.issued, Issue{User: user, At: now})
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"token": tok, "access_token": tok, "expires_in": int(s.ttl.Seconds()), "issued_at": now.UTC().Format(time.RFC3339),
	})
}

// upstreamAccepts asks the registry whether user and password are good.
func (s *Server) upstreamAccepts(r *http.Request, user, password string) bool {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, s.upstream.JoinPath("/v2/").String(), nil)
	if err != nil {
		return false
	}
	req.SetBasicAuth(user, password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
