package imageconv

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
)

// sparseWriter is the io.ReadWriteSeeker the ext4 writer writes through.
// Zeros written past everything written so far are skipped, leaving holes,
// so a multi-GiB sparse file in a layer costs no disk.
//
// It also lets a chunker follow the writer (stream): chunks below the data
// written so far are final, except the head (superblock and descriptors,
// written last) and anything written again later, which spoils the stream.
type sparseWriter struct {
	f         *os.File
	off       int64 // current position (the ext4 writer's goroutine only)
	mu        sync.Mutex
	cond      sync.Cond
	highWater int64 // end of the furthest real write
	size      int64 // logical size
	frozen    bool  // the data phase is over
	frontier  int64 // highWater when frozen
	aborted   bool
	handedOut int64 // bytes below this went to the chunker
	spoiled   bool  // a write landed below handedOut
}

func newSparseWriter(f *os.File) *sparseWriter {
	w := &sparseWriter{f: f}
	w.cond.L = &w.mu
	return w
}

var zeroBlock = make([]byte, 1<<16)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

func (w *sparseWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	skip := w.off >= w.highWater
	w.mu.Unlock()
	if skip && isZero(b) {
		w.off += int64(len(b))
		w.mu.Lock()
		w.size = max(w.size, w.off)
		w.mu.Unlock()
		return len(b), nil
	}
	n, err := w.WriteAt(b, w.off)
	w.off += int64(n)
	return n, err
}

// WriteAt writes b at off, noting whether it spoils the stream.
func (w *sparseWriter) WriteAt(b []byte, off int64) (int, error) {
	w.mu.Lock()
	if off < w.handedOut && off+int64(len(b)) > ext4HeadSize {
		w.spoiled = true
	}
	w.mu.Unlock()
	n, err := w.f.WriteAt(b, off)
	w.mu.Lock()
	w.highWater = max(w.highWater, off+int64(n))
	w.size = max(w.size, off+int64(n))
	w.cond.Broadcast()
	w.mu.Unlock()
	return n, err
}

// ReadAt reads the file; after finish the skipped tail is a hole.
func (w *sparseWriter) ReadAt(b []byte, off int64) (int, error) { return w.f.ReadAt(b, off) }

// freeze ends the data phase: what is written now is final but for the
// head; what comes later (directories, inode tables) is not yet.
func (w *sparseWriter) freeze() {
	w.mu.Lock()
	if !w.frozen {
		w.frozen, w.frontier = true, w.highWater
	}
	w.cond.Broadcast()
	w.mu.Unlock()
}

// abort stops a stream waiting for data.
func (w *sparseWriter) abort() {
	w.mu.Lock()
	w.aborted = true
	w.cond.Broadcast()
	w.mu.Unlock()
}

// stream returns the next function of a chunker that follows the writer:
// it yields data chunks in canonical order while they are final, blocking
// for the writer, and stops at the frozen frontier or on abort.
func (w *sparseWriter) stream(chunkSize int64) func() (i, length int64, ok bool) {
	k := headChunks(chunkSize)
	return func() (int64, int64, bool) {
		w.mu.Lock()
		defer w.mu.Unlock()
		for {
			end := (k + 1) * chunkSize
			switch {
			case w.aborted:
				return 0, 0, false
			case !w.frozen && end <= w.highWater, w.frozen && end <= w.frontier:
				w.handedOut = end
				k++
				return k - 1, chunkSize, true
			case w.frozen:
				return 0, 0, false
			}
			w.cond.Wait()
		}
	}
}

// isSpoiled reports whether a write landed on a chunk already streamed.
func (w *sparseWriter) isSpoiled() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.spoiled
}

func (w *sparseWriter) Read(b []byte) (int, error) {
	if w.off >= w.size {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), w.size-w.off)]
	n, err := w.f.ReadAt(b, w.off)
	if err == io.EOF { // a skipped tail reads as zeros
		clear(b[n:])
		n, err = len(b), nil
	}
	w.off += int64(n)
	return n, err
}

func (w *sparseWriter) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += w.off
	case io.SeekEnd:
		offset += w.size
	default:
		return 0, errors.New("bad whence")
	}
	if offset < 0 {
		return 0, errors.New("negative offset")
	}
	w.off = offset
	return offset, nil
}

// finish sets the file to its logical size, turning skipped zeros at the
// end into a hole.
func (w *sparseWriter) finish() error { return w.f.Truncate(w.size) }

const ext4Block = 4096
