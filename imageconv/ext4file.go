package imageconv

import (
	"bytes"
	"errors"
	"io"
	"os"
)

// sparseWriter is the io.ReadWriteSeeker the ext4 writer writes through.
// Zeros written past everything written so far are skipped, leaving holes,
// so a multi-GiB sparse file in a layer costs no disk.
type sparseWriter struct {
	f         *os.File
	off       int64 // current position
	highWater int64 // end of the furthest real write
	size      int64 // logical size
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
	if w.off >= w.highWater && isZero(b) {
		w.off += int64(len(b))
		w.size = max(w.size, w.off)
		return len(b), nil
	}
	n, err := w.f.WriteAt(b, w.off)
	w.off += int64(n)
	w.highWater = max(w.highWater, w.off)
	w.size = max(w.size, w.off)
	return n, err
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
