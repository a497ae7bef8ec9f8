package imageconv

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// ErrLayerDigest is returned when a layer's bytes do not match its digest
// or its diff ID.
var ErrLayerDigest = errors.New("layer content does not match its digest")

// Flatten applies layers bottom-up and writes the merged rootfs to out as a
// deterministic ext4 image, returning its size. Temporary files go in
// workDir and are removed before Flatten returns.
//
// It makes two passes. The first reads each layer once, verifying it and
// spooling the uncompressed tar to disk, and merges the headers into a tree
// (whiteouts, opaque directories, replacements, hard links). The second
// re-reads the spooled tars in layer order and streams the surviving
// entries, lower layers first, into the ext4 writer: files a base image
// contributes land at the same offsets in every image built on it.
func Flatten(ctx context.Context, layers []v1.Layer, out *os.File, workDir string, p Progress) (int64, error) {
	return flatten(ctx, layers, newSparseWriter(out), workDir, p, &flattenStats{})
}

type flattenStats struct {
	uncompressed int64 // bytes of the layers' tars
	// With bounded, spoolLimit bounds the uncompressed bytes spooled (see
	// WithMaxSourceSize); spooled counts them as they are written.
	bounded             bool
	spoolLimit, spooled int64
}

func flatten(ctx context.Context, layers []v1.Layer, sw *sparseWriter, workDir string, p Progress, stats *flattenStats) (int64, error) {
	spoolDir, err := os.MkdirTemp(workDir, "flatten-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(spoolDir)

	t := newTree()
	t.layer = 0
	spools := make([]string, len(layers))
	for i, l := range layers {
		spools[i] = filepath.Join(spoolDir, fmt.Sprintf("layer-%d.tar", i))
		if err := scanLayer(ctx, i, len(layers), l, t, spools[i], p, stats); err != nil {
			return 0, err
		}
		t.endLayer()
	}
	acts, shadow, hasLostFound := t.plan()

	stats.uncompressed = totalSize(spools)
	p.Phase("writing ext4", stats.uncompressed)
	if err := writeExt4(ctx, spools, acts, sw, p); err != nil {
		return 0, err
	}
	if err := sw.finish(); err != nil {
		return 0, err
	}
	if err := finishExt4(sw, shadow, !hasLostFound); err != nil {
		return 0, fmt.Errorf("finishing the ext4 image: %w", err)
	}
	return sw.size, nil
}

// finishExt4 removes the placeholders' shadow directory and, unless the
// image has its own, the lost+found the ext4 writer always makes, so the
// rootfs holds exactly what the image holds; then it fixes the bitmaps'
// padding so e2fsck passes.
func finishExt4(f readerWriterAt, shadow string, dropLostFound bool) error {
	e, err := openExt4Editor(f)
	if err != nil {
		return err
	}
	if dropLostFound {
		if err := e.removeTopLevel("lost+found"); err != nil {
			return fmt.Errorf("removing lost+found: %w", err)
		}
	}
	if err := e.removeTopLevel(shadow); err != nil {
		return fmt.Errorf("removing %s: %w", shadow, err)
	}
	if err := e.padInodeBitmaps(); err != nil {
		return err
	}
	return e.flush()
}

func totalSize(files []string) int64 {
	var n int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// scanLayer reads layer i once: verifies its digest and diff ID, spools
// the uncompressed tar to spool, and merges its headers into t.
func scanLayer(ctx context.Context, i, n int, l v1.Layer, t *tree, spool string, p Progress, stats *flattenStats) (err error) {
	dgst, err := l.Digest()
	if err != nil {
		return fmt.Errorf("layer %d: %w", i, err)
	}
	size, _ := l.Size()
	defer func() {
		if err != nil {
			err = fmt.Errorf("layer %d (%s): %w", i, dgst, err)
		}
	}()
	p.Phase(fmt.Sprintf("reading layer %d/%d", i+1, n), size)
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	blob := &checkedReader{r: &progressReader{ctx: ctx, r: rc, p: p}, h: sha256.New()}
	defer func() {
		if err != nil && ctx.Err() == nil && !errors.Is(err, ErrTooLarge) {
			err = blob.diagnose(err, dgst, size)
		}
	}()
	compressed := bufio.NewReaderSize(blob, 1<<20)
	dec, err := decompress(compressed)
	if err != nil {
		return err
	}
	defer dec.Close()
	ahead := newReadAhead(dec, 256<<10, 8)
	defer ahead.Close()

	f, err := os.Create(spool)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	h := sha256.New()
	tee := io.TeeReader(ahead, io.MultiWriter(&boundedWriter{w: bw, stats: stats}, h))
	tr := tar.NewReader(tee)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("malformed tar: %w", err)
		}
		if err := t.apply(hdr); err != nil {
			return err
		}
	}
	// Read the rest (tar padding, the compressor's trailer, the registry's
	// stream) so every checksum on the way is checked.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("reading past the end of the tar: %w", err)
	}
	if _, err := io.Copy(io.Discard, compressed); err != nil {
		return err
	}
	if err := rc.Close(); err != nil {
		return err
	}
	if diffID, err := l.DiffID(); err == nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != diffID.Hex {
			return fmt.Errorf("%w: uncompressed sha256:%s, want diff_id %s", ErrLayerDigest, got, diffID)
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// checkedReader counts and hashes a layer blob as it is read, so a failure
// can be blamed on the blob when the blob is what is wrong.
type checkedReader struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (c *checkedReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.h.Write(b[:n])
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// diagnose reads what is left of the blob (up to its declared size) and
// replaces err with a clearer one if the blob is short or corrupt.
func (c *checkedReader) diagnose(err error, dgst v1.Hash, size int64) error {
	if c.err == nil {
		_, _ = io.CopyN(io.Discard, c, max(0, size-c.n))
	}
	if size > 0 && c.n < size && (c.err == nil || c.err == io.EOF || errors.Is(c.err, io.ErrUnexpectedEOF)) {
		return fmt.Errorf("layer blob is truncated: the registry sent %d of %d bytes: %w", c.n, size, err)
	}
	if c.n == size && dgst.Algorithm == "sha256" {
		if got := hex.EncodeToString(c.h.Sum(nil)); got != dgst.Hex {
			return fmt.Errorf("%w: the registry sent bytes with sha256:%s", ErrLayerDigest, got)
		}
	}
	return err
}

type nopCloser struct{ io.Reader }

func (nopCloser) Close() error { return nil }

// decompress picks a decompressor from the stream's magic bytes, since
// registries' media types are not always right.
func decompress(r *bufio.Reader) (io.ReadCloser, error) {
	magic, err := r.Peek(4)
	if err != nil && err != io.EOF {
		return nil, err
	}
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	}
	return nopCloser{r}, nil
}

// writeExt4 streams the surviving entries into the ext4 writer.
func writeExt4(ctx context.Context, spools []string, acts [][]*action, w *sparseWriter, p Progress) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := writeMerged(ctx, spools, acts, pw, w, p)
		pw.CloseWithError(err)
		done <- err
	}()
	err := tar2ext4.ConvertTarToExt4(pr, w, tar2ext4.MaximumDiskSize(artifact.MaxImageSize))
	pr.CloseWithError(errors.New("ext4 writer stopped"))
	if werr := <-done; werr != nil {
		return werr
	}
	if err != nil {
		return fmt.Errorf("writing ext4: %w", err)
	}
	return nil
}

// writeMerged writes, as one tar stream, what acts say for each entry.
func writeMerged(ctx context.Context, spools []string, acts [][]*action, out io.Writer, sw *sparseWriter, p Progress) error {
	bw := bufio.NewWriterSize(out, 1<<20)
	tw := tar.NewWriter(bw)
	buf := make([]byte, 1<<20)
	for i, spool := range spools {
		if err := writeLayer(ctx, spool, acts[i], tw, buf, p); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	// Every file's data has gone into the pipe. Before the writer can see
	// the end of the stream and start on directories and inode tables,
	// mark what is written so far as final; the rest of the last file is
	// final too, but the frontier need not be exact, only safe.
	if err := bw.Flush(); err != nil {
		return err
	}
	sw.freeze()
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func writeLayer(ctx context.Context, spool string, acts []*action, tw *tar.Writer, buf []byte, p Progress) error {
	f, err := os.Open(spool)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(&progressReader{ctx: ctx, r: f, p: p})
	for ord := 0; ; ord++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if ord >= len(acts) {
			return fmt.Errorf("spooled layer changed: entry %d beyond %d", ord, len(acts))
		}
		a := acts[ord]
		if a == nil {
			continue
		}
		if a.ino == nil {
			h := mergedHeader(hdr, a.path)
			h.Typeflag = tar.TypeDir
			if err := tw.WriteHeader(h); err != nil {
				return fmt.Errorf("%q: %w", a.path, err)
			}
			continue
		}
		h := mergedHeader(hdr, a.path)
		h.Typeflag = a.ino.typeflag
		switch h.Typeflag {
		case tar.TypeRegA, tar.TypeGNUSparse:
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if o := a.ino.override; o != nil {
			h.Mode, h.Uid, h.Gid, h.ModTime, h.AccessTime = o.mode, o.uid, o.gid, o.mtime, o.atime
			for k, v := range o.paxRecords {
				if h.PAXRecords == nil {
					h.PAXRecords = map[string]string{}
				}
				h.PAXRecords[k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%q: %w", a.path, err)
		}
		if h.Typeflag == tar.TypeReg {
			src := io.Reader(tr)
			if a.placeholder {
				src = io.LimitReader(zeroReader{}, h.Size)
			}
			if _, err := io.CopyBuffer(tw, src, buf); err != nil {
				return fmt.Errorf("%q: %w", a.path, err)
			}
		}
		for _, l := range a.links {
			lh := &tar.Header{Typeflag: tar.TypeLink, Name: l, Linkname: a.path, Format: tar.FormatPAX}
			if err := tw.WriteHeader(lh); err != nil {
				return fmt.Errorf("%q: %w", l, err)
			}
		}
	}
}

// ext4Time adjusts t for the ext4 writer, which stores the seconds'
// bits as they are while the kernel reads the low 32 bits as signed and the
// two epoch bits as the multiple of 2^32 to add. From 2038 on, adding 2^32
// makes the epoch bits what the kernel expects. Times before 1970 or after
// 2262 become the epoch, as containerd's extraction does (boundTime).
func ext4Time(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	s := t.Unix()
	switch {
	case s < 0 || t.After(maxExtractTime):
		return time.Unix(0, 0)
	case s >= 1<<31:
		return t.Add((1 << 32) * time.Second)
	}
	return t
}

var maxExtractTime = time.Unix(0, 1<<63-1)

type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// mergedHeader copies what the ext4 writer uses from h, under a new name.
func mergedHeader(h *tar.Header, name string) *tar.Header {
	return &tar.Header{
		Name:       name,
		Linkname:   h.Linkname,
		Size:       h.Size,
		Mode:       h.Mode,
		Uid:        h.Uid,
		Gid:        h.Gid,
		ModTime:    ext4Time(h.ModTime),
		AccessTime: ext4Time(h.AccessTime),
		ChangeTime: ext4Time(h.ChangeTime),
		Devmajor:   h.Devmajor,
		Devminor:   h.Devminor,
		PAXRecords: xattrRecords(h),
		Format:     tar.FormatPAX,
	}
}

// progressReader reports bytes read and stops when ctx is done.
type progressReader struct {
	ctx context.Context
	r   io.Reader
	p   Progress
}

func (r *progressReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.Read(b)
	r.p.Advance(int64(n))
	return n, err
}
