package tokenauth

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestTokenFlow: go-containerregistry's client, with good credentials,
// gets a token and reads through the proxy; after ExpireAll it gets a
// new one; bad or revoked credentials get none.
func TestTokenFlow(t *testing.T) {
	reg := testutil.NewRegistry()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "alice-pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer upstream.Close()
	s, err := Start(upstream.URL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(s.Addr+"/team/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	alice := remote.WithAuth(&authn.Basic{Username: "alice", Password: "alice-pw"})
	if err := remote.Write(ref, img, alice); err != nil {
		t.Fatalf("push through the proxy: %v", err)
	}
	var terr *transport.Error
	if _, err := remote.Get(ref, remote.WithAuth(&authn.Basic{Username: "alice", Password: "wrong"})); !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
		t.Errorf("bad credentials: %v, want 401", err)
	}
	if _, err := remote.Get(ref); err == nil {
		t.Error("anonymous access through the proxy")
	}

	// One client across an expiry: the transport asks for a new token.
	got, err := remote.Image(ref, alice)
	if err != nil {
		t.Fatal(err)
	}
	before := len(s.Issued())
	s.ExpireAll()
	ls, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[0].Compressed()
	if err != nil {
		t.Fatalf("a blob after the tokens expired: %v", err)
	}
	rc.Close()
	if s.Expired() == 0 || len(s.Issued()) <= before {
		t.Errorf("after ExpireAll: %d requests refused as expired, %d tokens issued before, %d now", s.Expired(), before, len(s.Issued()))
	}

	s.Revoke("alice")
	s.ExpireAll()
	if _, err := remote.Get(ref, alice); err == nil {
		t.Error("a revoked user still got a token")
	}
}
