package debregistry

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testutil"
)

func TestAccessLog(t *testing.T) {
	testutil.Require(t, testutil.Tool(Binary))
	r, err := Start(t.TempDir(), WithAccessLog())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	before, err := r.Requests(0)
	if err != nil {
		t.Fatal(err)
	}
	const blob = "/v2/some/repo/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"
	resp, err := http.Get("http://" + r.Addr + blob + "?x=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got, err := r.Requests(len(before))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Method != "GET" || got[0].Path != blob || got[0].Status != resp.StatusCode {
		t.Fatalf("access log after one GET %s (status %d): %v", blob, resp.StatusCode, got)
	}
	if repo, dgst := got[0].Blob(); repo != "some/repo" || dgst != blob[len(blob)-71:] {
		t.Errorf("Blob() = %q, %q", repo, dgst)
	}
	if repo, _ := (Request{Path: "/v2/some/repo/manifests/v1"}).Blob(); repo != "" {
		t.Errorf("a manifest request parsed as a blob of %q", repo)
	}
	plain, err := Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Stop()
	if _, err := plain.Requests(0); err == nil {
		t.Error("Requests without WithAccessLog: no error")
	}
}

// TestProxy pins what distribution 2.8's pull-through cache does, which
// sluice's fetcher must cope with: a Range GET of a blob it lacks is
// answered 200 with the whole blob (streamed from the upstream, which it
// fetches twice: once for the client, once into its store); once stored,
// Range is honoured (206) and the upstream is not asked again. The access
// log gives each request's bytes and User-Agent.
func TestProxy(t *testing.T) {
	testutil.Require(t, testutil.Tool(Binary))
	origin, err := Start(t.TempDir(), WithAccessLog())
	if err != nil {
		t.Fatal(err)
	}
	defer origin.Stop()
	cache, err := Start(t.TempDir(), WithAccessLog(), WithProxy("http://"+origin.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Stop()
	blob := bytes.Repeat([]byte("sluice "), 100_000)
	dgst := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	pushBlob(t, origin.Addr, "app", dgst, blob)
	mark, _ := origin.Requests(0)
	get := func() (int, []byte) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+cache.Addr+"/v2/app/blobs/"+dgst, nil)
		req.Header.Set("Range", "bytes=7-13")
		req.Header.Set("User-Agent", "sluice-test")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := get(); code != http.StatusOK || !bytes.Equal(b, blob) {
		t.Fatalf("first Range GET through the cache: %d with %d bytes, want 200 with the whole blob", code, len(b))
	}
	var fills []Request
	if err := waitUntil(10*time.Second, func() bool {
		got, _ := origin.Requests(len(mark))
		fills = fills[:0]
		for _, r := range got {
			if _, d := r.Blob(); d == dgst && r.Method == http.MethodGet && r.Bytes == int64(len(blob)) {
				fills = append(fills, r)
			}
		}
		return len(fills) == 2
	}); err != nil {
		t.Fatalf("the upstream's whole-blob GETs for one cache miss: %v, want 2", fills)
	}
	if strings.HasPrefix(fills[0].UserAgent, "sluice") {
		t.Errorf("the upstream saw the client's User-Agent %q", fills[0].UserAgent)
	}
	mark, _ = origin.Requests(0)
	if code, b := get(); code != http.StatusPartialContent || string(b) != "sluice " {
		t.Fatalf("Range GET of a stored blob: %d %q, want 206 \"sluice \"", code, b)
	}
	if got, _ := origin.Requests(len(mark)); len(got) != 0 {
		t.Errorf("the upstream was asked %v for a blob the cache holds", got)
	}
	served, _ := cache.Requests(0)
	if last := served[len(served)-1]; last.UserAgent != "sluice-test" || last.Bytes != 7 || last.Status != http.StatusPartialContent {
		t.Errorf("the cache's access log: %+v, want the 206 of 7 bytes to sluice-test", last)
	}
}

func waitUntil(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// pushBlob uploads blob to repo in the registry at addr (POST, then one
// PUT).
func pushBlob(t *testing.T, addr, repo, dgst string, blob []byte) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("starting an upload: %s, %v", resp.Status, err)
	}
	q := loc.Query()
	q.Set("digest", dgst)
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(blob))
	req.Header.Set("Content-Type", "application/octet-stream")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %s", resp.Status)
	}
}
