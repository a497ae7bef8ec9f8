package debregistry

import (
	"net/http"
	"testing"

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
