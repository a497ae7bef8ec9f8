package imageconv

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sluice-project/sluice/test/testutil"
)

// faultRegistry is an in-process registry whose blob and manifest answers a
// test can spoil, and which counts writes.
type faultRegistry struct {
	host   string
	writes atomic.Int64
	// spoil, if set, may answer a request itself and return true.
	spoil atomic.Pointer[func(w http.ResponseWriter, r *http.Request, next http.Handler) bool]
}

func newFaultRegistry(t *testing.T) *faultRegistry {
	fr := &faultRegistry{}
	reg := testutil.NewRegistry()
	fr.host = testutil.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			fr.writes.Add(1)
		}
		if f := fr.spoil.Load(); f != nil && (*f)(w, r, reg) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	return fr
}

func (fr *faultRegistry) set(f func(w http.ResponseWriter, r *http.Request, next http.Handler) bool) {
	fr.spoil.Store(&f)
}

// rawLayer is an uncompressed tar layer served exactly as given.
func rawLayer(t *testing.T, entries []entry) v1.Layer {
	return static.NewLayer(tarBytes(t, entries), types.OCIUncompressedLayer)
}

func pushRaw(t *testing.T, host, repo string, img v1.Image) string {
	ref := host + "/" + repo
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

// fastRetry keeps the tests of 5xx answers short; the policy is the same.
var fastRetry = remote.WithRetryBackoff(remote.Backoff{Duration: 10 * time.Millisecond, Factor: 2, Steps: 3})

func TestConvertBadInput(t *testing.T) {
	good := []entry{{name: "etc/", typ: tar.TypeDir}, {name: "etc/passwd", body: "root:x:0:0::/root:/bin/sh\n"}}
	cases := []struct {
		name   string
		layers func(t *testing.T) []v1.Layer
		spoil  func(layer v1.Hash) func(w http.ResponseWriter, r *http.Request, next http.Handler) bool
		ref    func(ref string) string
		want   string // in the error message
		is     error
	}{
		{
			name: "malformed tar",
			layers: func(t *testing.T) []v1.Layer {
				junk := bytes.Repeat([]byte("this is not a tar header "), 100)
				return []v1.Layer{static.NewLayer(junk, types.OCIUncompressedLayer)}
			},
			want: "malformed tar",
		},
		{
			name: "dot-dot traversal",
			layers: func(t *testing.T) []v1.Layer {
				return []v1.Layer{rawLayer(t, []entry{{name: "etc/../../evil", body: "x"}})}
			},
			want: `"etc/../../evil" contains a .. component`,
			is:   ErrUnsafeEntry,
		},
		{
			name: "absolute path",
			layers: func(t *testing.T) []v1.Layer {
				return []v1.Layer{rawLayer(t, []entry{{name: "/etc/shadow", body: "x"}})}
			},
			want: `"/etc/shadow" is an absolute path`,
			is:   ErrUnsafeEntry,
		},
		{
			name: "symlink escaping the root",
			layers: func(t *testing.T) []v1.Layer {
				return []v1.Layer{
					rawLayer(t, []entry{{name: "escape", typ: tar.TypeSymlink, link: "../../../../tmp"}}),
					rawLayer(t, []entry{{name: "escape/owned", body: "x"}}),
				}
			},
			want: "escape/owned: a symlink leads out of the image root",
			is:   ErrUnsafeEntry,
		},
		{
			name: "hard link to a missing file",
			layers: func(t *testing.T) []v1.Layer {
				return []v1.Layer{rawLayer(t, []entry{{name: "a", typ: tar.TypeLink, link: "nowhere"}})}
			},
			want: `hard link "a" points at "nowhere", which does not exist`,
			is:   ErrUnsafeEntry,
		},
		{
			name:   "layer bytes do not match the digest",
			layers: func(t *testing.T) []v1.Layer { return []v1.Layer{rawLayer(t, good)} },
			spoil: func(layer v1.Hash) func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
				return serveBlob(layer, func(b []byte) []byte {
					b = bytes.Clone(b)
					i := bytes.Index(b, []byte("root:x"))
					b[i] = 'R' // same length, still a valid tar
					return b
				})
			},
			want: "layer content does not match its digest: the registry sent bytes with sha256:",
			is:   ErrLayerDigest,
		},
		{
			name:   "truncated blob",
			layers: func(t *testing.T) []v1.Layer { return []v1.Layer{layerOf(t, good)} },
			spoil: func(layer v1.Hash) func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
				return serveBlob(layer, func(b []byte) []byte { return b[:len(b)/2] })
			},
			want: "layer blob is truncated: the registry sent",
		},
		{
			name:   "image does not exist",
			layers: func(t *testing.T) []v1.Layer { return []v1.Layer{rawLayer(t, good)} },
			ref:    func(ref string) string { return strings.Replace(ref, ":v1", ":nope", 1) },
			want:   "MANIFEST_UNKNOWN",
		},
		{
			name:   "registry answers 401",
			layers: func(t *testing.T) []v1.Layer { return []v1.Layer{rawLayer(t, good)} },
			spoil: func(v1.Hash) func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
				return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
					w.Header().Set("WWW-Authenticate", `Basic realm="sluice-test"`)
					http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
					return true
				}
			},
			want: "UNAUTHORIZED",
		},
		{
			name:   "registry answers 500",
			layers: func(t *testing.T) []v1.Layer { return []v1.Layer{rawLayer(t, good)} },
			spoil: func(v1.Hash) func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
				return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
					http.Error(w, "boom", http.StatusInternalServerError)
					return true
				}
			},
			want: "500 Internal Server Error",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fr := newFaultRegistry(t)
			layers := c.layers(t)
			img, err := mutate.AppendLayers(empty.Image, layers...)
			if err != nil {
				t.Fatal(err)
			}
			ref := pushRaw(t, fr.host, "bad:v1", img)
			if c.spoil != nil {
				d, err := layers[0].Digest()
				if err != nil {
					t.Fatal(err)
				}
				fr.set(c.spoil(d))
			}
			if c.ref != nil {
				ref = c.ref(ref)
			}
			work := t.TempDir()
			before := fr.writes.Load()
			_, err = Convert(context.Background(), ref, WithPlainHTTP(), WithWorkDir(work), WithRemoteOptions(fastRetry))
			if err == nil {
				t.Fatal("Convert succeeded")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("error %q is not %v", err, c.is)
			}
			if n := fr.writes.Load() - before; n != 0 {
				t.Errorf("%d write requests reached the registry", n)
			}
			if left, _ := os.ReadDir(work); len(left) != 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
		})
	}
}

// serveBlob answers GETs of blob dgst with change(blob).
func serveBlob(dgst v1.Hash, change func([]byte) []byte) func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+dgst.String()) {
			return false
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		b := change(rec.Body.Bytes())
		w.Header().Set("Content-Length", rec.Header().Get("Content-Length"))
		w.WriteHeader(rec.Code)
		w.Write(b)
		return true
	}
}

func TestConvertDiffIDMismatch(t *testing.T) {
	fr := newFaultRegistry(t)
	img, err := mutate.AppendLayers(empty.Image, rawLayer(t, []entry{{name: "a", body: "a"}}))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref := pushRaw(t, fr.host, "diffid:v1", img)
	work := t.TempDir()
	_, err = Convert(context.Background(), ref, WithPlainHTTP(), WithWorkDir(work))
	if !errors.Is(err, ErrLayerDigest) || !strings.Contains(err.Error(), "want diff_id sha256:abab") {
		t.Fatalf("error %v, want a diff_id mismatch", err)
	}
	if left, _ := os.ReadDir(work); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}
