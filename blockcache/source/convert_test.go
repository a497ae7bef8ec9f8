package source

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// requests records conversion requests.
type requests struct {
	mu     sync.Mutex
	images []string
}

func (r *requests) Request(image string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.images = append(r.images, image)
}

// TestConvertRequests: an image with no artifact is asked for by its
// manifest digest (or its reference, without one); an image with an
// artifact, or with artifacts none of which is trusted, is not.
func TestConvertRequests(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r := &requests{}
	v, err := signature.NewVerifier(e.pub)
	if err != nil {
		t.Fatal(err)
	}
	src := e.source(WithConvertRequests(r), WithVerifier(v))
	if _, err := src.Open(ctx, e.plain); !errors.Is(err, artifact.ErrNoArtifact) {
		t.Fatalf("Open of an unconverted image: %v", err)
	}
	if _, err := src.Open(ctx, Request{Image: e.plain.Image}); !errors.Is(err, artifact.ErrNoArtifact) {
		t.Fatalf("Open of an unconverted image by tag: %v", err)
	}
	h, err := src.Open(ctx, e.app)
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	repo := e.plain.Image[:strings.LastIndex(e.plain.Image, ":")]
	want := []string{repo + "@" + e.plain.ManifestDigest, e.plain.Image}
	if strings.Join(r.images, " ") != strings.Join(want, " ") {
		t.Errorf("requests %q, want %q", r.images, want)
	}

	// A node trusting another key: the image has an artifact, just none
	// it trusts; converting again would not help, so nothing is asked.
	_, otherPub, err := signature.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	vOther, _ := signature.NewVerifier(loadPublic(t, otherPub))
	r2 := &requests{}
	src2 := e.source(WithConvertRequests(r2), WithVerifier(vOther))
	if _, err := src2.Open(ctx, e.app); !errors.Is(err, artifact.ErrUntrusted) {
		t.Fatalf("Open under another key: %v", err)
	}
	if len(r2.images) != 0 {
		t.Errorf("requests %q for an image with an untrusted artifact", r2.images)
	}
}
