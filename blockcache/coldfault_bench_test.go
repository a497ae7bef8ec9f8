package blockcache

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/testutil"
)

// coldImage is one image of compressible text (about 3:1 under zstd, as
// binaries and libraries are) converted at the default chunk size, for the
// cold-fault benchmark: a registry of its own, so that its artifact is the
// repository's only one.
type coldImage struct {
	url string // the registry's base URL
	art *artifact.Artifact
}

func buildColdImage(b *testing.B) (*coldImage, error) {
	ctx := context.Background()
	host := testutil.Serve(b, testutil.NewRegistry())
	rng := rand.New(rand.NewPCG(3, 4))
	words := strings.Fields("the of and to in is was for on that with as by it at from his an were are which this be or has had not first one their its new after but who they two her she been other when there all during into school time may years more most only over city some world would where later up such used many can state about national out known university united then made")
	var text strings.Builder
	for text.Len() < 48<<20 {
		text.WriteString(words[rng.IntN(len(words))])
		if rng.IntN(9) == 0 {
			fmt.Fprintf(&text, " %d\n", rng.Uint32())
		} else {
			text.WriteByte(' ')
		}
	}
	layer, err := tarLayer(map[string][]byte{"text.txt": []byte(text.String())})
	if err != nil {
		return nil, err
	}
	ref := host + "/cold/app:v1"
	if err := pushImage(ref, layer); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "blockcache-cold-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	if _, err := imageconv.Convert(ctx, ref, imageconv.WithPlainHTTP(), imageconv.WithWorkDir(work)); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	art, err := artifact.Lookup(ctx, ref, artifact.WithPlainHTTP())
	if err != nil {
		return nil, fmt.Errorf("lookup: %w", err)
	}
	if art.Index.ChunkSize != artifact.DefaultChunkSize {
		return nil, fmt.Errorf("converted at %d bytes a chunk, want the default %d", art.Index.ChunkSize, artifact.DefaultChunkSize)
	}
	return &coldImage{url: "http://" + host, art: art}, nil
}

// BenchmarkColdFault: one 4 KiB read at a random offset of a chunk no
// read has fetched yet, at the default chunk size, next to a plain GET of
// that chunk's compressed range with a kept-alive client. own-ns/op is the
// difference of the two means: sluice's own share of a cold fault (range
// request, decode, hash, hand-off), without the NBD hop bench/fio adds.
// "direct" reads from an in-process registry (near-zero service time);
// "proxy" through bench/fio's throttleproxy at 5 ms RTT and 100 MB/s, as
// bench/fio's cold phase does.
func BenchmarkColdFault(b *testing.B) {
	ci, err := buildColdImage(b)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("direct", func(b *testing.B) { coldFaults(b, ci.url, ci.art) })
	b.Run("proxy", func(b *testing.B) {
		host := startThrottleProxy(b, ci.url, "5ms", "100MB")
		art := *ci.art
		repo, err := name.NewRepository(host+"/"+ci.art.Repo.RepositoryStr(), name.Insecure)
		if err != nil {
			b.Fatal(err)
		}
		art.Repo = repo
		coldFaults(b, "http://"+host, &art)
	})
}

// startThrottleProxy builds and starts bench/fio's throttleproxy in front
// of upstream and returns its host:port.
func startThrottleProxy(b *testing.B, upstream, rtt, bandwidth string) string {
	dir := b.TempDir()
	bin := filepath.Join(dir, "throttleproxy")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sluice-project/sluice/bench/fio/throttleproxy").CombinedOutput(); err != nil {
		b.Fatalf("go build throttleproxy: %v\n%s", err, out)
	}
	addrFile := filepath.Join(dir, "addr")
	cmd := exec.Command(bin, "--upstream", upstream, "--rtt", rtt, "--bandwidth", bandwidth, "--addr-file", addrFile)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if addr, err := os.ReadFile(addrFile); err == nil && len(addr) > 0 {
			return strings.TrimSpace(string(addr))
		}
		if time.Since(start) > 30*time.Second {
			b.Fatal("throttleproxy did not write its address in 30 s")
		}
	}
}

func coldFaults(b *testing.B, url string, art *artifact.Artifact) {
	ix := art.Index
	var chunks []int
	for i, c := range ix.Chunks {
		if !c.Zero() {
			chunks = append(chunks, i)
		}
	}
	blobURL := url + "/v2/" + art.Repo.RepositoryStr() + "/blobs/" + art.Data.Digest.String()
	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	get := func(i int) error {
		c := ix.Chunks[i]
		req, err := http.NewRequest(http.MethodGet, blobURL, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", c.Offset, c.Offset+uint64(c.Length)-1))
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil && (resp.StatusCode != http.StatusPartialContent || n != int64(c.Length)) {
			err = fmt.Errorf("GET chunk %d: %s, %d bytes, want 206 and %d", i, resp.Status, n, c.Length)
		}
		return err
	}

	rng := rand.New(rand.NewPCG(5, 6))
	p := make([]byte, 4096)
	var im *Image
	var order []int
	var sluice, plain time.Duration
	reopen := func() {
		if im != nil {
			im.Close()
		}
		store, err := OpenStore(context.Background(), b.TempDir(), 1<<30)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { store.Close() })
		if im, err = Open(context.Background(), art, store, WithBackgroundRate(0)); err != nil {
			b.Fatal(err)
		}
		order = append(order[:0], chunks...)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		// Warm the connection and the client's token.
		if _, err := im.ReadAt(p, int64(order[0])*ix.ChunkSize); err != nil {
			b.Fatal(err)
		}
		order = order[1:]
	}
	b.ReportAllocs()
	for b.Loop() {
		if len(order) == 0 {
			b.StopTimer()
			reopen()
			b.StartTimer()
		}
		i := order[0]
		order = order[1:]
		off := int64(i)*ix.ChunkSize + rng.Int64N(ix.ChunkLen(i)/4096)*4096
		t0 := time.Now()
		if _, err := im.ReadAt(p, off); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := get(i); err != nil {
			b.Fatal(err)
		}
		sluice += t1.Sub(t0)
		plain += time.Since(t1)
	}
	if im != nil {
		im.Close()
	}
	n := float64(b.N)
	b.ReportMetric(float64(sluice.Nanoseconds())/n, "sluice-ns/op")
	b.ReportMetric(float64(plain.Nanoseconds())/n, "get-ns/op")
	b.ReportMetric(float64((sluice-plain).Nanoseconds())/n, "own-ns/op")
}
