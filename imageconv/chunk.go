package imageconv

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// zstdLevel is fixed: the encoder is deterministic for a given level, and
// the data blob's digest must not depend on the machine.
const zstdLevel = zstd.SpeedFastest

// ext4HeadSize is the superblock and group descriptor area the ext4 writer
// fills in last (1 + 64 blocks for a 1 TiB maximum size).
const ext4HeadSize = (1 + 64) * ext4Block

// headChunks is how many chunks overlap the ext4 head.
func headChunks(chunkSize int64) int64 { return (ext4HeadSize + chunkSize - 1) / chunkSize }

// chunkOrder yields the canonical processing order of n chunks from
// position skip on: the data chunks first, then the head chunks, whose
// content is known last. The data blob's layout follows this order, so it
// never depends on timing.
func chunkOrder(n, head, skip int64) func() (int64, bool) {
	head = min(head, n)
	pos := skip
	return func() (int64, bool) {
		if pos >= n {
			return 0, false
		}
		i := head + pos
		if pos >= n-head {
			i = pos - (n - head)
		}
		pos++
		return i, true
	}
}

// ChunkImage cuts the flattened image in src (size bytes) into chunks,
// writes each distinct non-zero chunk zstd-compressed to data, and returns
// the index. Holes in src are recognised without reading them.
func ChunkImage(ctx context.Context, src *os.File, size, chunkSize int64, data io.Writer, p Progress) (*artifact.Index, error) {
	if err := artifact.ValidateChunkSize(chunkSize); err != nil {
		return nil, err
	}
	cw := newChunkWriter(chunkSize, data, p)
	p.Phase("chunking", size)
	if err := cw.finish(ctx, src, size, headChunks(chunkSize)); err != nil {
		return nil, err
	}
	return cw.index(size)
}

// chunkWriter hashes, compresses and stores chunks in the order it is
// given them, dropping duplicates.
type chunkWriter struct {
	chunkSize int64
	data      io.Writer
	p         Progress
	chunks    []artifact.Chunk
	done      int64 // chunks processed, in canonical order
	seen      map[[32]byte]artifact.Chunk
	off       uint64
}

func newChunkWriter(chunkSize int64, data io.Writer, p Progress) *chunkWriter {
	return &chunkWriter{chunkSize: chunkSize, data: data, p: p, seen: map[[32]byte]artifact.Chunk{}}
}

// finish processes every chunk not yet processed, in canonical order.
func (cw *chunkWriter) finish(ctx context.Context, src *os.File, size, head int64) error {
	if size%4096 != 0 || size > artifact.MaxImageSize {
		return fmt.Errorf("image size %d is not a multiple of 4096 up to 1 TiB", size)
	}
	n := artifact.ChunkCount(size, cw.chunkSize)
	next := chunkOrder(n, head, cw.done)
	return cw.run(ctx, src, func() (int64, int64, bool) {
		i, ok := next()
		if !ok {
			return 0, 0, false
		}
		return i, min(cw.chunkSize, size-i*cw.chunkSize), true
	})
}

func (cw *chunkWriter) index(size int64) (*artifact.Index, error) {
	n := artifact.ChunkCount(size, cw.chunkSize)
	ix := &artifact.Index{ImageSize: size, ChunkSize: cw.chunkSize, DataSize: int64(cw.off), Chunks: make([]artifact.Chunk, n)}
	copy(ix.Chunks, cw.chunks)
	return ix, ix.Validate()
}

// run processes the chunks next yields (index and length), in that order:
// one goroutine reads, GOMAXPROCS hash and compress, this one writes.
func (cw *chunkWriter) run(ctx context.Context, src *os.File, next func() (i, length int64, ok bool)) error {
	chunkSize := cw.chunkSize
	workers := runtime.GOMAXPROCS(0)
	// Bound memory: at most ~64 MiB of chunks in flight, at least two.
	inflight := max(2, min(2*workers+2, int((64<<20)/chunkSize)))
	type job struct {
		i, length int64
		buf       []byte // nil for a hole
		out       []byte // compressed
		dgst      [32]byte
		zero      bool
		err       error
		done      chan struct{}
	}
	bufs := make(chan []byte, inflight)
	for range inflight {
		bufs <- make([]byte, chunkSize)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	jobs := make(chan *job, inflight)
	ordered := make(chan *job, inflight)

	// Reader: one goroutine, in order.
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(jobs)
		defer close(ordered)
		for {
			i, length, ok := next()
			if !ok {
				return
			}
			j := &job{i: i, length: length, done: make(chan struct{})}
			off := i * chunkSize
			if hole, err := isHole(src, off, length); err != nil {
				j.err = err
			} else if hole {
				j.zero = true
			} else {
				select {
				case j.buf = <-bufs:
				case <-ctx.Done():
					return
				}
				j.buf = j.buf[:length]
				if _, err := src.ReadAt(j.buf, off); err != nil {
					j.err = fmt.Errorf("reading chunk %d: %w", i, err)
				}
			}
			select {
			case ordered <- j:
			case <-ctx.Done():
				return
			}
			if j.buf == nil || j.err != nil {
				close(j.done)
				continue
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				j.err = ctx.Err()
				close(j.done)
				return
			}
		}
	}()

	// Workers: hash and compress.
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstdLevel), zstd.WithEncoderConcurrency(1))
			if err != nil {
				panic(err) // only for invalid options
			}
			defer enc.Close()
			for j := range jobs {
				if isZero(j.buf) {
					j.zero = true
				} else {
					j.dgst = sha256.Sum256(j.buf)
					j.out = enc.EncodeAll(j.buf, nil)
				}
				close(j.done)
			}
		}()
	}

	// Writer: in order, dropping duplicates.
	for j := range ordered {
		<-j.done
		if j.buf != nil {
			bufs <- j.buf[:cap(j.buf)]
		}
		if j.err != nil {
			return j.err
		}
		cw.p.Advance(j.length)
		cw.done++
		for int64(len(cw.chunks)) <= j.i {
			cw.chunks = append(cw.chunks, artifact.Chunk{})
		}
		if j.zero {
			continue
		}
		if c, ok := cw.seen[j.dgst]; ok {
			cw.chunks[j.i] = c
			continue
		}
		if _, err := cw.data.Write(j.out); err != nil {
			return fmt.Errorf("writing data blob: %w", err)
		}
		c := artifact.Chunk{Digest: j.dgst, Offset: cw.off, Length: uint32(len(j.out))}
		cw.off += uint64(len(j.out))
		cw.seen[j.dgst] = c
		cw.chunks[j.i] = c
	}
	return ctx.Err()
}

// isHole reports whether [off, off+length) of f holds no data, using
// SEEK_DATA; filesystems without it report no holes.
func isHole(f *os.File, off, length int64) (bool, error) {
	next, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return true, nil // no data after off
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
		return false, nil
	case err != nil:
		return false, err
	}
	return next >= off+length, nil
}
