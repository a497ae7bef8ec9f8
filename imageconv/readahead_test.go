package imageconv

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

func TestReadAhead(t *testing.T) {
	src := make([]byte, 1<<20+123)
	for i := range src {
		src[i] = byte(rand.Uint32())
	}
	for _, bufSize := range []int{1, 7, 4096, 1 << 20, 2 << 20} {
		ra := newReadAhead(iotest.HalfReader(bytes.NewReader(src)), bufSize, 3)
		var got bytes.Buffer
		// Odd-sized reads, so buffers end mid-read and exactly at a read.
		b := make([]byte, 1000)
		for {
			n, err := ra.Read(b[:1+rand.IntN(len(b))])
			got.Write(b[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		ra.Close()
		if !bytes.Equal(got.Bytes(), src) {
			t.Fatalf("buffer %d: got %d bytes, not the source", bufSize, got.Len())
		}
	}
	boom := errors.New("boom")
	ra := newReadAhead(io.MultiReader(bytes.NewReader(src[:10]), iotest.ErrReader(boom)), 4, 2)
	if _, err := io.ReadAll(ra); !errors.Is(err, boom) {
		t.Fatalf("error %v, want boom", err)
	}
}
