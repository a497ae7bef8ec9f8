package imageconv

import (
	"archive/tar"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/testutil"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// randomTree returns a layer's entries: n files of pseudo-random content.
func randomTree(seed uint64, dir string, n int) []entry {
	r := rand.New(rand.NewPCG(seed, seed))
	es := []entry{{name: dir + "/", typ: tar.TypeDir}}
	for i := range n {
		b := make([]byte, 1000+r.IntN(100_000))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		es = append(es, entry{name: fmt.Sprintf("%s/f%04d", dir, i), body: string(b)})
	}
	return es
}

// sharedChunks returns the fraction of b's stored chunks that a has too.
func sharedChunks(a, b *artifact.Index) float64 {
	have := map[[32]byte]bool{}
	for _, c := range a.Chunks {
		have[c.Digest] = true
	}
	shared, total := 0, 0
	for _, c := range b.Chunks {
		if c.Zero() {
			continue
		}
		total++
		if have[c.Digest] {
			shared++
		}
	}
	return float64(shared) / float64(total)
}

func TestDeterministicAndSharedBase(t *testing.T) {
	host := testutil.Registry(t)
	// usr/a takes 2 blocks: replacing it would shift everything after it
	// off the 16-block chunk grid if the layout closed the gap.
	base := append([]entry{{name: "usr/", typ: tar.TypeDir}, {name: "usr/a", body: strings.Repeat("a", 5000)}},
		randomTree(1, "usr", 150)[1:]...) // ~7.5 MB
	// The app layer also changes and deletes base files, as package
	// installs do; that must not move the rest of the base.
	app := append(randomTree(2, "app", 5),
		entry{name: "usr/", typ: tar.TypeDir},
		entry{name: "usr/a", body: "patched"},
	)
	baseRef := pushImage(t, host, "base:v1", layerOf(t, base))
	// The same base layer pushed again as a fresh blob in another repo.
	baseRef2 := pushImage(t, host, "other/base:v1", layerOf(t, base))
	appRef := pushImage(t, host, "app:v1", layerOf(t, base), layerOf(t, app))

	const cs = 64 << 10
	r1 := convertOne(t, baseRef, WithChunkSize(cs))
	r2 := convertOne(t, baseRef2, WithChunkSize(cs))
	// Same manifest, converted independently: the same artifact.
	if r1.Artifact != r2.Artifact {
		t.Fatalf("converting the same image gave %s and %s", r1.Artifact, r2.Artifact)
	}
	lookup := func(ref string) *artifact.Index {
		a, err := artifact.Lookup(context.Background(), ref, artifact.WithPlainHTTP())
		if err != nil {
			t.Fatal(err)
		}
		return a.Index
	}
	ixBase, ixBase2 := lookup(baseRef), lookup(baseRef2)
	b1, _ := ixBase.MarshalBinary()
	b2, _ := ixBase2.MarshalBinary()
	if string(b1) != string(b2) {
		t.Fatal("the same layers gave different ext4 images")
	}
	convertOne(t, appRef, WithChunkSize(cs))
	ixApp := lookup(appRef)
	ratio := sharedChunks(ixBase, ixApp)
	t.Logf("base+app shares %.1f%% of its stored chunks with base", 100*ratio)
	if ratio < 0.8 {
		t.Errorf("only %.1f%% of base+app's chunks are shared with base", 100*ratio)
	}
}
