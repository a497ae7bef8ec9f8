package convertsvc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/sluice-project/sluice/test/internal/imagebuild"
)

var fixedTime = time.Unix(1_700_000_000, 0)

func meta(mode int64) imagebuild.Meta { return imagebuild.Meta{Mode: mode, ModTime: fixedTime} }

// testImage is an image written as an OCI layout, for skopeo to push.
type testImage struct {
	img    v1.Image
	digest string // manifest digest
	layout string // OCI layout dir holding it
}

// newImage builds a one-layer image unique to id, holding size bytes of
// random data (seeded by id: the same id gives the same digest), and
// writes it as an OCI layout under dir.
func newImage(t *testing.T, dir, id string, size int) *testImage {
	t.Helper()
	var seed [32]byte
	copy(seed[:], id)
	data := make([]byte, size)
	_, _ = rand.NewChaCha8(seed).Read(data)
	l := imagebuild.New().Layer()
	l.Dir("etc", meta(0o755))
	l.File("etc/image-id", []byte(id+"\n"), meta(0o644))
	l.Dir("data", meta(0o755))
	l.File("data/random.bin", data, meta(0o644))
	gz, err := l.Gzip()
	if err != nil {
		t.Fatal(err)
	}
	return imageOf(t, dir, id, gz)
}

// zerosImage builds an image whose one layer holds size zero bytes: a
// small blob of a large tar.
func zerosImage(t *testing.T, dir, id string, size int) *testImage {
	t.Helper()
	l := imagebuild.New().Layer()
	l.File("zeros-"+id, make([]byte, size), meta(0o644))
	gz, err := l.Gzip()
	if err != nil {
		t.Fatal(err)
	}
	return imageOf(t, dir, id, gz)
}

func imageOf(t *testing.T, dir, id string, gz ...[]byte) *testImage {
	t.Helper()
	img, err := imagebuild.Image(gz...)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ti := &testImage{img: img, digest: d.String(), layout: filepath.Join(dir, "layout-"+id)}
	p, err := layout.Write(ti.layout, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	return ti
}

// skopeoPush pushes ti to REGISTRY/REPO:TAG with skopeo, as a CI job
// would.
func skopeoPush(ctx context.Context, ti *testImage, dest string, creds ...string) error {
	args := []string{"copy", "--quiet", "--dest-tls-verify=false"}
	if len(creds) > 0 {
		args = append(args, "--dest-creds", creds[0])
	}
	args = append(args, "oci:"+ti.layout, "docker://"+dest)
	if out, err := run(ctx, "skopeo", args...); err != nil {
		return fmt.Errorf("skopeo copy to %s: %v\n%s", dest, err, out)
	}
	return nil
}

// inspectSigned runs sluice inspect --key with the service's public key:
// it succeeds once the image has an artifact signed by the service.
func (e *env) inspectSigned(ctx context.Context, image string) ([]byte, error) {
	return run(ctx, e.sluice, "inspect", "--plain-http", "--key", e.pub, image)
}

// waitConverted waits until image has an artifact signed by the service
// and returns how long that took and inspect's output.
func (e *env) waitConverted(t *testing.T, image string, d time.Duration) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	var out []byte
	err := waitFor(d, func() bool {
		var err error
		out, err = e.inspectSigned(context.Background(), image)
		return err == nil
	})
	if err != nil {
		t.Fatalf("no artifact of %s signed by the service's key within %v; sluice inspect:\n%s\nservice log:\n%s", image, d, out, e.svc.logTail(30))
	}
	return time.Since(start), string(out)
}

var _ = os.Getenv
