package imageconv

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// Summary describes one conversion.
type Summary struct {
	Layers             int
	SourceCompressed   int64 // bytes of the source's layer blobs
	SourceUncompressed int64 // bytes of the source's layer tars
	ImageSize          int64 // bytes of the flattened ext4 image
	ArtifactSize       int64 // bytes of the artifact: manifest, index and data blobs
	ChunkSize          int64
	Chunks             int
	ZeroChunks         int
	UniqueChunks       int
	Elapsed            time.Duration
}

// Result is one converted platform.
type Result struct {
	// Platform is "os/arch[/variant]", or "" if the source did not say.
	Platform string
	// Source is the source image manifest, the artifact's subject.
	Source v1.Descriptor
	// Artifact is the digest of the artifact manifest.
	Artifact v1.Hash
	// Signature is the digest of its signature's manifest (WithSignKey).
	Signature v1.Hash
	Summary   Summary
}

// Convert flattens image (for a multi-platform image, every platform or
// those given by WithPlatforms), and pushes one artifact per platform into
// image's repository (each signed, with WithSignKey). It builds every
// platform before it pushes any, so a failure pushes nothing; temporary
// files are always removed.
func Convert(ctx context.Context, image string, opts ...Option) ([]Result, error) {
	o := newOptions(opts)
	if err := artifact.ValidateChunkSize(o.chunkSize); err != nil {
		return nil, err
	}
	ref, targets, workDir, err := o.prepare(ctx, image, "sluice-convert-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(workDir)

	results := make([]Result, len(targets))
	builds := make([]*built, len(targets))
	for i, t := range targets {
		start := time.Now()
		b, sum, err := buildOne(ctx, ref.Context(), t, filepath.Join(workDir, fmt.Sprint(i)), o)
		if err != nil {
			if t.platform != "" {
				return nil, fmt.Errorf("%s (%s): %w", image, t.platform, err)
			}
			return nil, fmt.Errorf("%s: %w", image, err)
		}
		sum.Elapsed = time.Since(start)
		builds[i] = b
		results[i] = Result{Platform: t.platform, Source: t.desc, Artifact: b.manifest.Digest, Summary: sum}
	}
	if o.dryRun {
		return results, nil
	}
	for i, b := range builds {
		start := time.Now()
		if err := push(ctx, ref.Context(), b, o); err != nil {
			return nil, err
		}
		if o.signKey != nil {
			desc := v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: b.manifest.Digest, Size: int64(len(b.manifest.Raw))}
			sig, err := signature.Sign(ctx, ref.Context(), desc, o.signKey, o.registry...)
			if err != nil {
				return nil, err
			}
			results[i].Signature = sig.Digest
		}
		results[i].Summary.Elapsed += time.Since(start)
	}
	return results, nil
}

// prepare resolves image, picks the manifests to convert and makes a work
// directory (named prefix...; the caller removes it).
func (o *options) prepare(ctx context.Context, image, prefix string) (name.Reference, []target, string, error) {
	ref, desc, err := o.resolve(ctx, image)
	if err != nil {
		return nil, nil, "", err
	}
	targets, err := selectTargets(desc, o)
	if err != nil {
		return nil, nil, "", fmt.Errorf("%s: %w", image, err)
	}
	workDir, err := os.MkdirTemp(o.workDir, prefix)
	if err != nil {
		return nil, nil, "", fmt.Errorf("creating a work directory: %w", err)
	}
	return ref, targets, workDir, nil
}

type target struct {
	desc     v1.Descriptor
	platform string
	image    v1.Image
}

// selectTargets picks the image manifests to convert.
func selectTargets(desc *remote.Descriptor, o *options) ([]target, error) {
	if !desc.MediaType.IsIndex() {
		if !desc.MediaType.IsImage() {
			return nil, fmt.Errorf("%s is not an image manifest or index", desc.MediaType)
		}
		img, err := desc.Image()
		if err != nil {
			return nil, err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, fmt.Errorf("reading image config: %w", err)
		}
		platform := ""
		if p := cf.Platform(); p != nil && p.OS != "" {
			platform = p.String()
		}
		if len(o.platforms) > 0 && (cf.Platform() == nil || !artifact.MatchesAny(*cf.Platform(), o.platforms)) {
			return nil, fmt.Errorf("the image is for platform %q, not one of those asked for", platform)
		}
		return []target{{desc: desc.Descriptor, platform: platform, image: img}}, nil
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var ts []target
	for _, m := range artifact.PlatformManifests(im, o.platforms) {
		img, err := idx.Image(m.Digest)
		if err != nil {
			return nil, err
		}
		ts = append(ts, target{desc: m, platform: m.Platform.String(), image: img})
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("the index has no image for the platforms asked for")
	}
	return ts, nil
}

// buildOne flattens and chunks one image into dir.
func buildOne(ctx context.Context, repo name.Repository, t target, dir string, o *options) (*built, Summary, error) {
	var sum Summary
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, sum, err
	}
	layers, err := t.image.Layers()
	if err != nil {
		return nil, sum, fmt.Errorf("listing layers: %w", err)
	}
	sum.Layers = len(layers)
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return nil, sum, err
		}
		sum.SourceCompressed += n
	}
	if o.maxSource > 0 && sum.SourceCompressed > o.maxSource {
		return nil, sum, fmt.Errorf("%w: %d bytes of compressed layers, more than the bound of %d", ErrTooLarge, sum.SourceCompressed, o.maxSource)
	}
	ext4Path := filepath.Join(dir, "rootfs.ext4")
	ext4, err := os.OpenFile(ext4Path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, sum, err
	}
	defer ext4.Close()
	b := &built{platform: t.platform, dataPath: filepath.Join(dir, "data")}
	data, err := newBlobFile(b.dataPath)
	if err != nil {
		return nil, sum, err
	}
	defer data.f.Close()

	// Chunk while the ext4 image is written: the file data is final as soon
	// as it is written, so a chunker follows the writer on the other core.
	sw := newSparseWriter(ext4)
	cw := newChunkWriter(o.chunkSize, data, noProgress{})
	streamed := make(chan error, 1)
	go func() { streamed <- cw.run(ctx, ext4, sw.stream(o.chunkSize)) }()
	stats := &flattenStats{}
	if o.maxSource > 0 {
		stats.bounded, stats.spoolLimit = true, o.maxSource-sum.SourceCompressed
	}
	size, err := flatten(ctx, layers, sw, dir, o.progress, stats)
	sw.abort()
	if serr := <-streamed; err == nil {
		err = serr
	}
	if err != nil {
		return nil, sum, err
	}
	sum.SourceUncompressed = stats.uncompressed
	sum.ImageSize = size
	if sw.isSpoiled() {
		// A write landed on a chunk already taken: start the chunks over.
		if err := data.reset(); err != nil {
			return nil, sum, err
		}
		cw = newChunkWriter(o.chunkSize, data, noProgress{})
	}
	o.progress.Phase("chunking", size-cw.done*o.chunkSize)
	cw.p = o.progress
	if err := cw.finish(ctx, ext4, size, headChunks(o.chunkSize)); err != nil {
		return nil, sum, err
	}
	ix, err := cw.index(size)
	if err != nil {
		return nil, sum, err
	}
	dataDigest, err := data.close()
	if err != nil {
		return nil, sum, err
	}
	// The flattened image is no longer needed; free its disk now.
	ext4.Close()
	os.Remove(ext4Path)

	dataDesc := v1.Descriptor{MediaType: artifact.DataMediaType, Size: ix.DataSize, Digest: dataDigest}
	if b.manifest, err = artifact.NewManifest(ix, dataDesc, t.desc, t.platform); err != nil {
		return nil, sum, err
	}
	sum.ArtifactSize = int64(len(b.manifest.Raw)) + int64(len(b.manifest.Index)) + ix.DataSize
	sum.ChunkSize = ix.ChunkSize
	sum.Chunks = len(ix.Chunks)
	sum.ZeroChunks = ix.ZeroChunks()
	sum.UniqueChunks = len(cw.seen) // each distinct digest is stored once
	return b, sum, nil
}

// built is one converted platform, ready to push.
type built struct {
	platform string
	dataPath string // the data blob
	manifest *artifact.Manifest
}

// push uploads b into repo, showing the data blob's progress.
func push(ctx context.Context, repo name.Repository, b *built, o *options) error {
	o.progress.Phase("pushing "+b.platform, b.manifest.Data.Size)
	openData := func() (io.ReadCloser, error) {
		f, err := os.Open(b.dataPath)
		if err != nil {
			return nil, err
		}
		return struct {
			io.Reader
			io.Closer
		}{&progressReader{ctx: ctx, r: f, p: o.progress}, f}, nil
	}
	return artifact.Push(ctx, repo, b.manifest, openData, o.registry...)
}

// blobFile writes a blob to a file, hashing it, and can start over.
type blobFile struct {
	f  *os.File
	bw *bufio.Writer
	h  hash.Hash
}

func newBlobFile(path string) (*blobFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	b := &blobFile{f: f, h: sha256.New()}
	b.bw = bufio.NewWriterSize(io.MultiWriter(f, b.h), 1<<20)
	return b, nil
}

func (b *blobFile) Write(p []byte) (int, error) { return b.bw.Write(p) }

func (b *blobFile) reset() error {
	if err := b.f.Truncate(0); err != nil {
		return err
	}
	if _, err := b.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	b.h.Reset()
	b.bw.Reset(io.MultiWriter(b.f, b.h))
	return nil
}

func (b *blobFile) close() (v1.Hash, error) {
	if err := b.bw.Flush(); err != nil {
		return v1.Hash{}, err
	}
	if err := b.f.Close(); err != nil {
		return v1.Hash{}, err
	}
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(b.h.Sum(nil))}, nil
}
