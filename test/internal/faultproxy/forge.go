package faultproxy

import (
	"encoding/binary"
	"errors"

	"github.com/klauspost/compress/zstd"
)

// zstd frame layout (RFC 8878, section 3.1.1): what forgeFrames needs of it.
const (
	zstdMagic      = 0xFD2FB528
	blockTypeRaw   = 0
	blockTypeRLE   = 1
	checksumLength = 4
)

// forgeFrames flips one bit of content in the first raw (stored) block of
// the zstd frames in b, in place, and rewrites that frame's content
// checksum to match, so the frame still decompresses, without error and
// to the same length, but to different bytes: only a digest of the
// content can tell. It reports whether it found a raw block to change.
func forgeFrames(b []byte) (bool, error) {
	for pos := 0; pos < len(b); {
		start := pos
		end, raw, hasChecksum, err := parseFrame(b, pos)
		if err != nil {
			return false, err
		}
		pos = end
		if raw < 0 {
			continue
		}
		b[raw] ^= 0x10
		if hasChecksum {
			return true, fixChecksum(b[start:end])
		}
		return true, nil
	}
	return false, nil
}

// parseFrame parses the frame at b[pos:] and returns where it ends, the
// offset of the first content byte of its first raw block (-1: none), and
// whether it carries a content checksum.
func parseFrame(b []byte, pos int) (end, raw int, hasChecksum bool, err error) {
	errShort := errors.New("zstd frame: truncated")
	if len(b)-pos < 5 || binary.LittleEndian.Uint32(b[pos:]) != zstdMagic {
		return 0, 0, false, errors.New("zstd frame: bad magic")
	}
	fhd := b[pos+4]
	pos += 5
	singleSegment := fhd&0x20 != 0
	hasChecksum = fhd&0x04 != 0
	if !singleSegment {
		pos++ // window descriptor
	}
	pos += []int{0, 1, 2, 4}[fhd&0x03] // dictionary ID
	switch fcs := fhd >> 6; {
	case fcs == 0 && singleSegment:
		pos++
	case fcs > 0:
		pos += 1 << fcs // 2, 4 or 8 bytes
	}
	raw = -1
	for {
		if len(b)-pos < 3 {
			return 0, 0, false, errShort
		}
		h := uint32(b[pos]) | uint32(b[pos+1])<<8 | uint32(b[pos+2])<<16
		pos += 3
		last, typ, size := h&1 != 0, (h>>1)&3, int(h>>3)
		n := size
		if typ == blockTypeRLE {
			n = 1
		}
		if len(b)-pos < n {
			return 0, 0, false, errShort
		}
		if typ == blockTypeRaw && size > 0 && raw < 0 {
			raw = pos + size/2
		}
		pos += n
		if last {
			break
		}
	}
	if hasChecksum {
		if len(b)-pos < checksumLength {
			return 0, 0, false, errShort
		}
		pos += checksumLength
	}
	return pos, raw, hasChecksum, nil
}

// fixChecksum rewrites the content checksum at the end of one frame to
// match its (changed) content. The checksum depends on the content alone,
// so it is taken from a fresh encoding of that content.
func fixChecksum(frame []byte) error {
	dec, err := zstd.NewReader(nil, zstd.IgnoreChecksum(true), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer dec.Close()
	content, err := dec.DecodeAll(frame, nil)
	if err != nil {
		return err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	fresh := enc.EncodeAll(content, nil)
	enc.Close()
	copy(frame[len(frame)-checksumLength:], fresh[len(fresh)-checksumLength:])
	return nil
}
