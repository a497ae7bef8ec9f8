package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestRangeGet pushes an image and reads part of a layer blob back with a
// Range request, as sluice's fetcher does.
func TestRangeGet(t *testing.T) {
	srv := httptest.NewServer(newHandler())
	defer srv.Close()
	dgst, blob := pushLayer(t, srv.URL)
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/v2/bench/x/blobs/%s", srv.URL, dgst), nil)
	req.Header.Set("Range", "bytes=100-1099")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, blob[100:1100]) {
		t.Fatalf("Range GET: %s, %d bytes, want 206 and bytes 100-1099 of the blob", resp.Status, len(got))
	}
	if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes 100-1099/%d", len(blob)) {
		t.Errorf("Content-Range %q", cr)
	}
	// nbdkit's curl plugin reads only a URL whose HEAD says it takes ranges.
	head, err := http.Head(fmt.Sprintf("%s/v2/bench/x/blobs/%s", srv.URL, dgst))
	if err != nil {
		t.Fatal(err)
	}
	head.Body.Close()
	if head.StatusCode != http.StatusOK || head.Header.Get("Accept-Ranges") != "bytes" || head.ContentLength != int64(len(blob)) {
		t.Errorf("HEAD of the blob: %s, Accept-Ranges %q, Content-Length %d; want 200, bytes, %d", head.Status, head.Header.Get("Accept-Ranges"), head.ContentLength, len(blob))
	}
}

// TestRangePastTheEnd: a range whose last byte is at or past the blob's
// end gets the blob's remainder, as from distribution's registry (nbdkit
// 1.32's curl plugin asks for one byte past each range it reads).
func TestRangePastTheEnd(t *testing.T) {
	srv := httptest.NewServer(newHandler())
	defer srv.Close()
	dgst, blob := pushLayer(t, srv.URL)
	size := len(blob)
	for _, last := range []int{size, size + 1000} {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/v2/bench/x/blobs/%s", srv.URL, dgst), nil)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", size-500, last))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, blob[size-500:]) {
			t.Errorf("Range bytes=%d-%d of a %d-byte blob: %s, %d bytes; want 206 and its last 500 bytes", size-500, last, size, resp.Status, len(got))
		}
		if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes %d-%d/%d", size-500, size-1, size) {
			t.Errorf("Content-Range %q", cr)
		}
	}
}

// pushLayer pushes a random one-layer image to the registry at url as
// bench/x:latest and returns its layer's digest and blob.
func pushLayer(t *testing.T, url string) (v1.Hash, []byte) {
	t.Helper()
	img, err := random.Image(100000, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(url, "http://") + "/bench/x:latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	dgst, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	blob, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return dgst, blob
}
