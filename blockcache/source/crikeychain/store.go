package crikeychain

import (
	"encoding/base64"
	"net/url"
	"strings"
	"sync"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Store holds the credentials of CRI pulls by image reference, in memory.
// Its methods may be called concurrently.
type Store struct {
	mu      sync.Mutex
	byImage map[string]*creds
}

// NewStore returns an empty Store.
func NewStore() *Store { return &Store{byImage: map[string]*creds{}} }

// creds are one pull's credentials. Never formatted: see String.
type creds struct {
	// server is the registry host the credentials are for; "" means the
	// image's own registry.
	server string
	cfg    authn.AuthConfig
}

// String keeps credentials out of anything that formats them.
func (c *creds) String() string { return "[credentials]" }

// Put records the credentials of a pull of image, replacing those of an
// earlier pull; a pull without any (nil or empty) leaves them as they
// were. It returns whether it recorded any; image must parse as a
// reference.
func (s *Store) Put(image string, auth *runtime.AuthConfig) (bool, error) {
	key, err := Normalize(image)
	if err != nil {
		return false, err
	}
	c := fromCRI(auth)
	if c == nil {
		return false, nil
	}
	s.mu.Lock()
	s.byImage[key] = c
	s.mu.Unlock()
	return true, nil
}

// Remove forgets image's credentials.
func (s *Store) Remove(image string) {
	key, err := Normalize(image)
	if err != nil {
		return
	}
	s.mu.Lock()
	delete(s.byImage, key)
	s.mu.Unlock()
}

// Len is the number of images whose credentials are held.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byImage)
}

func (s *Store) get(key string) *creds {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byImage[key]
}

// Keychain returns the credentials of image's pulls: its Resolve gives an
// authenticator reading the image's latest credentials at each use, for
// the registry they are meant for, and authn.Anonymous for any other
// registry or while the image has none (so that it can come first in an
// authn.NewMultiKeychain).
func (s *Store) Keychain(image string) authn.Keychain {
	key, err := Normalize(image)
	if err != nil {
		return anonymous{}
	}
	return imageKeychain{s: s, key: key}
}

type anonymous struct{}

func (anonymous) Resolve(authn.Resource) (authn.Authenticator, error) { return authn.Anonymous, nil }

type imageKeychain struct {
	s   *Store
	key string
}

func (k imageKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	registry := target.RegistryStr()
	c := k.s.get(k.key)
	if c == nil || !c.appliesTo(registry, k.key) {
		return authn.Anonymous, nil
	}
	return &liveAuth{s: k.s, key: k.key, registry: registry, last: c}, nil
}

// liveAuth is an image's credentials as of each Authorization call.
type liveAuth struct {
	s        *Store
	key      string
	registry string

	mu   sync.Mutex
	last *creds // the last credentials seen, for when the image's are gone
}

func (a *liveAuth) Authorization() (*authn.AuthConfig, error) {
	c := a.s.get(a.key)
	a.mu.Lock()
	defer a.mu.Unlock()
	if c != nil && c.appliesTo(a.registry, a.key) {
		a.last = c
	}
	cfg := a.last.cfg
	return &cfg, nil
}

// String keeps credentials out of anything that formats them.
func (a *liveAuth) String() string { return "[pull credentials of " + a.key + "]" }

// Normalize returns image as containerd's CRI plugin names it (and labels
// its snapshots with): docker.io/library/app:latest for "app".
func Normalize(image string) (string, error) {
	named, err := reference.ParseDockerRef(image)
	if err != nil {
		return "", err
	}
	return named.String(), nil
}

// fromCRI copies a CRI AuthConfig, nil if it holds no credentials. As
// containerd's CRI plugin, "auth" (base64 user:password) is used only
// without a user name.
func fromCRI(a *runtime.AuthConfig) *creds {
	if a == nil {
		return nil
	}
	c := &creds{cfg: authn.AuthConfig{
		Username:      a.GetUsername(),
		Password:      a.GetPassword(),
		IdentityToken: a.GetIdentityToken(),
		RegistryToken: a.GetRegistryToken(),
	}}
	if c.cfg.Username == "" && a.GetAuth() != "" {
		if b, err := base64.StdEncoding.DecodeString(a.GetAuth()); err == nil {
			if user, pass, ok := strings.Cut(string(b), ":"); ok {
				c.cfg.Username, c.cfg.Password = user, pass
			}
		}
	}
	if c.cfg == (authn.AuthConfig{}) {
		return nil
	}
	if sa := a.GetServerAddress(); sa != "" {
		c.server = serverHost(sa)
	}
	return c
}

// serverHost is the host[:port] of a CRI ServerAddress ("https://host/v1/",
// "host:port" or "host").
func serverHost(addr string) string {
	if !strings.Contains(addr, "://") {
		addr = "dummy://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" {
		return canonicalHost(addr)
	}
	return canonicalHost(u.Host)
}

// appliesTo reports whether c is meant for registry (host[:port]) when
// fetching the image key.
func (c *creds) appliesTo(registry, key string) bool {
	server := c.server
	if server == "" {
		named, err := reference.ParseNormalizedNamed(key)
		if err != nil {
			return false
		}
		server = canonicalHost(reference.Domain(named))
	}
	return server == canonicalHost(registry)
}

// canonicalHost names Docker Hub one way: its credentials are keyed
// "https://index.docker.io/v1/", its images "docker.io/...", and its API is
// registry-1.docker.io (go-containerregistry says index.docker.io).
func canonicalHost(h string) string {
	switch h {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return h
}
