package imageconv

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/klauspost/compress/zstd"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// ErrChunkDigest means a chunk's bytes do not match its digest.
var ErrChunkDigest = errors.New("chunk does not match its digest")

// Export reassembles the flattened ext4 image of image from its artifact
// into the file dst, verifying every chunk. All-zero chunks become holes.
// On error the partial file is removed.
func Export(ctx context.Context, image, dst string, opts ...Option) (err error) {
	o := newOptions(opts)
	a, err := artifact.Lookup(ctx, image, o.lookupOptions()...)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	l, err := remote.Layer(a.Repo.Digest(a.Data.Digest.String()), o.remoteOptions(ctx)...)
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("fetching data blob %s: %w", a.Data.Digest, err)
	}
	defer rc.Close()
	o.progress.Phase("exporting", a.Data.Size)
	r := bufio.NewReaderSize(&progressReader{ctx: ctx, r: rc, p: o.progress}, 1<<20)
	if err := writeChunks(a.Index, r, f); err != nil {
		return fmt.Errorf("data blob %s: %w", a.Data.Digest, err)
	}
	// Drain so the blob's own digest is checked too.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("data blob %s: %w", a.Data.Digest, err)
	}
	return f.Truncate(a.Index.ImageSize)
}

// writeChunks reads the data blob in order and writes every chunk to the
// image offsets that use it, after checking its digest.
func writeChunks(ix *artifact.Index, r io.Reader, w io.WriterAt) error {
	users := map[uint64][]int{}
	var offsets []uint64
	for i, c := range ix.Chunks {
		if c.Zero() {
			continue
		}
		if _, ok := users[c.Offset]; !ok {
			offsets = append(offsets, c.Offset)
		}
		users[c.Offset] = append(users[c.Offset], i)
	}
	sort.Slice(offsets, func(i, j int) bool { return offsets[i] < offsets[j] })
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer dec.Close()
	var pos uint64
	var comp, plain []byte
	for _, off := range offsets {
		first := ix.Chunks[users[off][0]]
		if off < pos {
			return fmt.Errorf("%w: chunks overlap at offset %d", artifact.ErrBadIndex, off)
		}
		if _, err := io.CopyN(io.Discard, r, int64(off-pos)); err != nil {
			return err
		}
		comp = slices.Grow(comp[:0], int(first.Length))[:first.Length]
		if _, err := io.ReadFull(r, comp); err != nil {
			return fmt.Errorf("reading chunk at %d: %w", off, err)
		}
		pos = off + uint64(first.Length)
		plain, err = dec.DecodeAll(comp, plain[:0])
		if err != nil {
			return fmt.Errorf("chunk %d: %w: %v", users[off][0], ErrChunkDigest, err)
		}
		if sha256.Sum256(plain) != first.Digest {
			return fmt.Errorf("chunk %d: %w", users[off][0], ErrChunkDigest)
		}
		for _, i := range users[off] {
			if int64(len(plain)) != ix.ChunkLen(i) {
				return fmt.Errorf("chunk %d: %w: %d bytes, want %d", i, ErrChunkDigest, len(plain), ix.ChunkLen(i))
			}
			if _, err := w.WriteAt(plain, int64(i)*ix.ChunkSize); err != nil {
				return err
			}
		}
	}
	return nil
}
