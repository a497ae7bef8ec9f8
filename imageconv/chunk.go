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
)

// zstdLevel is fixed: the encoder is deterministic for a given level, and
// the data blob's digest must not depend on the machine.
const zstdLevel = zstd.SpeedFastest

// ChunkImage cuts the flattened image in src (size bytes) into chunks, writes
// each distinct non-zero chunk zstd-compressed to data, and returns the
// index. Holes in src are recognised without reading them.
func ChunkImage(ctx context.Context, src *os.File, size, chunkSize int64, data io.Writer, p Progress) (*Index, error) {
	if err := ValidateChunkSize(chunkSize); err != nil {
		return nil, err
	}
	if size%4096 != 0 || size > maxImageSize {
		return nil, fmt.Errorf("image size %d is not a multiple of 4096 up to 1 TiB", size)
	}
	n := ChunkCount(size, chunkSize)
	ix := &Index{ImageSize: size, ChunkSize: chunkSize, Chunks: make([]Chunk, n)}
	p.Phase("chunking", size)

	workers := runtime.GOMAXPROCS(0)
	// Bound memory: at most ~64 MiB of chunks in flight, at least two.
	inflight := max(2, min(2*workers+2, int((64<<20)/chunkSize)))
	type job struct {
		i    int64
		buf  []byte // nil for a hole
		out  []byte // compressed
		dgst [32]byte
		zero bool
		err  error
		done chan struct{}
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
	go func() {
		defer close(jobs)
		defer close(ordered)
		for i := range n {
			j := &job{i: i, done: make(chan struct{})}
			off := i * chunkSize
			length := min(chunkSize, size-off)
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
	seen := map[[32]byte]Chunk{}
	var off uint64
	for j := range ordered {
		<-j.done
		if j.buf != nil {
			bufs <- j.buf[:cap(j.buf)]
		}
		if j.err != nil {
			return nil, j.err
		}
		length := min(chunkSize, size-j.i*chunkSize)
		p.Advance(length)
		if j.zero {
			continue
		}
		if c, ok := seen[j.dgst]; ok {
			ix.Chunks[j.i] = c
			continue
		}
		if _, err := data.Write(j.out); err != nil {
			return nil, fmt.Errorf("writing data blob: %w", err)
		}
		c := Chunk{Digest: j.dgst, Offset: off, Length: uint32(len(j.out))}
		off += uint64(len(j.out))
		seen[j.dgst] = c
		ix.Chunks[j.i] = c
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ix.DataSize = int64(off)
	return ix, nil
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
