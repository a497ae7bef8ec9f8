package imageconv

import (
	"errors"
	"fmt"
	"io"
)

// ErrTooLarge means an image exceeds the bound of WithMaxSourceSize.
var ErrTooLarge = errors.New("image too large")

// boundedWriter counts the uncompressed layer bytes spooled and fails once
// they pass the bound, before the bytes beyond it reach the disk.
type boundedWriter struct {
	w     io.Writer
	stats *flattenStats
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	s := b.stats
	if s.bounded && s.spooled+int64(len(p)) > s.spoolLimit {
		return 0, fmt.Errorf("%w: more than %d bytes of uncompressed layers besides the compressed ones", ErrTooLarge, s.spoolLimit)
	}
	s.spooled += int64(len(p))
	return b.w.Write(p)
}
