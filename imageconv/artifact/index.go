package artifact

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// Index format constants; FORMAT.md documents the layout.
const (
	indexMagic      = "SLUICEIX"
	IndexVersion    = 1
	indexHeaderSize = 64
	indexEntrySize  = 48

	// MinChunkSize and MaxChunkSize bound the chunk size: a power of two,
	// a multiple of the 4 KiB block.
	MinChunkSize = 4 << 10
	MaxChunkSize = 64 << 20
	// DefaultChunkSize is used when no chunk size is given.
	DefaultChunkSize = 256 << 10

	// MaxImageSize bounds the flattened image: 1 TiB.
	MaxImageSize = 1 << 40
)

// ErrBadIndex is returned for an index blob that cannot be trusted.
var ErrBadIndex = errors.New("malformed sluice index")

// Chunk is one entry of the chunk table.
type Chunk struct {
	// Digest is the sha256 of the uncompressed chunk.
	Digest [32]byte
	// Offset and Length locate the compressed chunk in the data blob.
	// Length 0 marks an all-zero chunk, which is not stored.
	Offset uint64
	Length uint32
}

// Zero reports whether the chunk is all zeros (not stored).
func (c Chunk) Zero() bool { return c.Length == 0 }

// Index is the decoded index blob: the geometry of the flattened image and
// where each chunk lives in the data blob.
type Index struct {
	// ImageSize is the size in bytes of the flattened ext4 image.
	ImageSize int64
	// ChunkSize is the uncompressed size of every chunk but the last.
	ChunkSize int64
	// DataSize is the size of the data blob.
	DataSize int64
	// Chunks has one entry per chunk, in image order.
	Chunks []Chunk
}

// ChunkCount returns how many chunks an image of size bytes has.
func ChunkCount(size, chunkSize int64) int64 {
	return (size + chunkSize - 1) / chunkSize
}

// ChunkLen returns the uncompressed length of chunk i.
func (ix *Index) ChunkLen(i int) int64 {
	start := int64(i) * ix.ChunkSize
	return min(ix.ChunkSize, ix.ImageSize-start)
}

// StoredBytes returns the bytes of distinct stored chunks.
func (ix *Index) StoredBytes() int64 {
	seen := make(map[uint64]struct{}, len(ix.Chunks))
	var n int64
	for _, c := range ix.Chunks {
		if c.Zero() {
			continue
		}
		if _, ok := seen[c.Offset]; ok {
			continue
		}
		seen[c.Offset] = struct{}{}
		n += int64(c.Length)
	}
	return n
}

// ZeroChunks returns the number of all-zero chunks.
func (ix *Index) ZeroChunks() int {
	n := 0
	for _, c := range ix.Chunks {
		if c.Zero() {
			n++
		}
	}
	return n
}

// ValidateChunkSize checks that n is a usable chunk size.
func ValidateChunkSize(n int64) error {
	if n < MinChunkSize || n > MaxChunkSize || bits.OnesCount64(uint64(n)) != 1 {
		return fmt.Errorf("chunk size %d: must be a power of two between %d and %d bytes", n, MinChunkSize, MaxChunkSize)
	}
	return nil
}

// MarshalBinary encodes the index in format version 1.
func (ix *Index) MarshalBinary() ([]byte, error) {
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, indexHeaderSize+len(ix.Chunks)*indexEntrySize)
	copy(b, indexMagic)
	le := binary.LittleEndian
	le.PutUint32(b[8:], IndexVersion)
	le.PutUint32(b[12:], 0) // flags
	le.PutUint64(b[16:], uint64(ix.ImageSize))
	le.PutUint64(b[24:], uint64(ix.ChunkSize))
	le.PutUint64(b[32:], uint64(len(ix.Chunks)))
	le.PutUint64(b[40:], uint64(ix.DataSize))
	for i, c := range ix.Chunks {
		e := b[indexHeaderSize+i*indexEntrySize:]
		copy(e, c.Digest[:])
		le.PutUint64(e[32:], c.Offset)
		le.PutUint32(e[40:], c.Length)
	}
	return b, nil
}

// ParseIndex decodes and validates an index blob. It never panics and
// allocates at most in proportion to len(b).
func ParseIndex(b []byte) (*Index, error) {
	if len(b) < indexHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than the header", ErrBadIndex, len(b))
	}
	if !bytes.Equal(b[:8], []byte(indexMagic)) {
		return nil, fmt.Errorf("%w: bad magic %q", ErrBadIndex, b[:8])
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != IndexVersion {
		return nil, fmt.Errorf("%w: version %d is not supported (this sluice reads version %d)", ErrBadIndex, v, IndexVersion)
	}
	if f := le.Uint32(b[12:]); f != 0 {
		return nil, fmt.Errorf("%w: unknown flags %#x", ErrBadIndex, f)
	}
	imageSize, chunkSize := le.Uint64(b[16:]), le.Uint64(b[24:])
	count, dataSize := le.Uint64(b[32:]), le.Uint64(b[40:])
	if imageSize > MaxImageSize || chunkSize > MaxChunkSize || dataSize > MaxImageSize*2 {
		return nil, fmt.Errorf("%w: absurd geometry (image %d, chunk %d, data %d bytes)", ErrBadIndex, imageSize, chunkSize, dataSize)
	}
	// Divide rather than multiply: a huge count must not wrap around.
	if table := uint64(len(b) - indexHeaderSize); table%indexEntrySize != 0 || count != table/indexEntrySize {
		return nil, fmt.Errorf("%w: the header says %d chunks, the table has %d bytes of %d-byte entries", ErrBadIndex, count, len(b)-indexHeaderSize, indexEntrySize)
	}
	if !allZero(b[48:indexHeaderSize]) {
		return nil, fmt.Errorf("%w: reserved header bytes are not zero", ErrBadIndex)
	}
	ix := &Index{ImageSize: int64(imageSize), ChunkSize: int64(chunkSize), DataSize: int64(dataSize)}
	ix.Chunks = make([]Chunk, count)
	for i := range ix.Chunks {
		e := b[indexHeaderSize+i*indexEntrySize:]
		c := &ix.Chunks[i]
		copy(c.Digest[:], e[:32])
		c.Offset = le.Uint64(e[32:])
		c.Length = le.Uint32(e[40:])
		if !allZero(e[44:indexEntrySize]) {
			return nil, fmt.Errorf("%w: reserved bytes of chunk %d are not zero", ErrBadIndex, i)
		}
	}
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	return ix, nil
}

// Validate checks the geometry and the chunk table: what ParseIndex and
// MarshalBinary refuse.
func (ix *Index) Validate() error {
	if err := ValidateChunkSize(ix.ChunkSize); err != nil {
		return fmt.Errorf("%w: %v", ErrBadIndex, err)
	}
	if ix.ImageSize < 0 || ix.ImageSize > MaxImageSize || ix.ImageSize%4096 != 0 {
		return fmt.Errorf("%w: image size %d is not a multiple of 4096 up to 1 TiB", ErrBadIndex, ix.ImageSize)
	}
	if want := ChunkCount(ix.ImageSize, ix.ChunkSize); int64(len(ix.Chunks)) != want {
		return fmt.Errorf("%w: %d chunks for an image of %d bytes in %d-byte chunks, want %d", ErrBadIndex, len(ix.Chunks), ix.ImageSize, ix.ChunkSize, want)
	}
	// A chunk compresses to at most a little more than its size; anything
	// bigger is a corrupt table that would make a reader allocate wildly.
	maxLen := uint64(ix.ChunkSize) + uint64(ix.ChunkSize)/64 + 1024
	for i, c := range ix.Chunks {
		if c.Zero() {
			if c.Offset != 0 || c.Digest != ([32]byte{}) {
				return fmt.Errorf("%w: zero chunk %d has an offset or digest", ErrBadIndex, i)
			}
			continue
		}
		if uint64(c.Length) > maxLen {
			return fmt.Errorf("%w: chunk %d is %d bytes compressed, more than %d", ErrBadIndex, i, c.Length, maxLen)
		}
		if end := c.Offset + uint64(c.Length); end < c.Offset || end > uint64(ix.DataSize) {
			return fmt.Errorf("%w: chunk %d [%d,+%d) lies outside the %d-byte data blob", ErrBadIndex, i, c.Offset, c.Length, ix.DataSize)
		}
	}
	return nil
}

func allZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }
