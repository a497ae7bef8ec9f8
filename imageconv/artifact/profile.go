package artifact

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrBadProfile is returned for a profile blob that cannot be used.
var ErrBadProfile = errors.New("malformed sluice profile")

// Profile lists chunk indices in the order a recorded start first read
// them. It is the content of an artifact's optional profile blob
// (ProfileMediaType), encoded little-endian as:
//
//	offset size field
//	0      8    magic "SLUICEPF"
//	8      4    version, 1
//	12     4    flags, 0
//	16     8    chunk size the indices refer to
//	24     8    count
//	32     4*n  chunk indices (uint32)
type Profile struct {
	ChunkSize int64
	Chunks    []int
}

const (
	profileMagic      = "SLUICEPF"
	profileVersion    = 1
	profileHeaderSize = 32
)

// MarshalBinary encodes the profile.
func (p Profile) MarshalBinary() ([]byte, error) {
	b := make([]byte, profileHeaderSize+4*len(p.Chunks))
	copy(b, profileMagic)
	le := binary.LittleEndian
	le.PutUint32(b[8:], profileVersion)
	le.PutUint64(b[16:], uint64(p.ChunkSize))
	le.PutUint64(b[24:], uint64(len(p.Chunks)))
	for i, c := range p.Chunks {
		if c < 0 || int64(c) > 1<<32-1 {
			return nil, fmt.Errorf("%w: chunk index %d", ErrBadProfile, c)
		}
		le.PutUint32(b[profileHeaderSize+4*i:], uint32(c))
	}
	return b, nil
}

// ParseProfile decodes a profile blob. Indices are checked against an index
// when the profile is used, not here.
func ParseProfile(b []byte) (Profile, error) {
	if len(b) < profileHeaderSize || !bytes.Equal(b[:8], []byte(profileMagic)) {
		return Profile{}, fmt.Errorf("%w: no header", ErrBadProfile)
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != profileVersion {
		return Profile{}, fmt.Errorf("%w: version %d is not supported", ErrBadProfile, v)
	}
	if f := le.Uint32(b[12:]); f != 0 {
		return Profile{}, fmt.Errorf("%w: unknown flags %#x", ErrBadProfile, f)
	}
	n := le.Uint64(b[24:])
	if uint64(len(b)-profileHeaderSize) != 4*n {
		return Profile{}, fmt.Errorf("%w: %d chunks need %d bytes, have %d", ErrBadProfile, n, 4*n, len(b)-profileHeaderSize)
	}
	p := Profile{ChunkSize: int64(le.Uint64(b[16:])), Chunks: make([]int, n)}
	for i := range p.Chunks {
		p.Chunks[i] = int(le.Uint32(b[profileHeaderSize+4*i:]))
	}
	return p, nil
}

// MaxProfileSize is the largest profile blob of an image of n chunks: one
// that lists every chunk once.
func MaxProfileSize(n int) int64 { return profileHeaderSize + 4*int64(n) }
