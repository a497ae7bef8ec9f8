package blockcache

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// errNoExt4 means the image does not start with an ext4 superblock whose
// layout this file reads: its metadata is not prefetched.
var errNoExt4 = errors.New("no ext4 layout to prefetch")

// ext4Layout is where an ext4 filesystem keeps its metadata, read from its
// superblock and group descriptors: enough to find the blocks a mount and
// a path walk read before any file data.
type ext4Layout struct {
	blockSize      int64
	inodeSize      int64
	inodesPerGroup int64
	inodesCount    int64
	// gdtOff and gdtLen locate the group descriptors, descSize bytes
	// each; unusedKept says bg_itable_unused is kept in them.
	gdtOff, gdtLen, descSize int64
	unusedKept               bool
	// meta are the byte ranges of the superblock and group descriptors,
	// the bitmaps and the inode tables ([lo, hi) of the image).
	meta [][2]int64
	// tables are the inode tables' used parts, one per group.
	tables [][2]int64
}

const (
	sbOffset     = 1024
	sbSize       = 1024
	ext4Magic    = 0xEF53
	incompat64   = 0x80   // INCOMPAT_64BIT: descriptors of s_desc_size
	incompatMeta = 0x10   // INCOMPAT_META_BG: descriptors spread over the image
	roGdtCsum    = 0x10   // RO_COMPAT_GDT_CSUM: bg_itable_unused is kept
	roMetaCsum   = 0x400  // RO_COMPAT_METADATA_CSUM: likewise
	modeDir      = 0x4000 // S_IFDIR
	modeMask     = 0xF000
	flagExtents  = 0x80000    // EXT4_EXTENTS_FL
	flagInline   = 0x10000000 // EXT4_INLINE_DATA_FL
)

// superblock parses the ext4 superblock sb (the image's bytes 1024..2047)
// of an image of imageSize bytes: the layout, save for what the group
// descriptors say.
func superblock(sb []byte, imageSize int64) (*ext4Layout, error) {
	le := binary.LittleEndian
	if len(sb) < sbSize || le.Uint16(sb[0x38:]) != ext4Magic {
		return nil, fmt.Errorf("%w: no ext4 magic at offset %d", errNoExt4, sbOffset+0x38)
	}
	logBlock := le.Uint32(sb[0x18:])
	if logBlock > 6 {
		return nil, fmt.Errorf("%w: block size 2^(10+%d)", errNoExt4, logBlock)
	}
	bs := int64(1024) << logBlock
	incompat, roCompat := le.Uint32(sb[0x60:]), le.Uint32(sb[0x64:])
	if incompat&incompatMeta != 0 {
		return nil, fmt.Errorf("%w: meta_bg group descriptors", errNoExt4)
	}
	blocks := int64(le.Uint32(sb[0x04:]))
	descSize := int64(32)
	if incompat&incompat64 != 0 {
		blocks |= int64(le.Uint32(sb[0x150:])) << 32
		descSize = int64(le.Uint16(sb[0xFE:]))
		if descSize < 64 || descSize > 1024 || descSize&(descSize-1) != 0 {
			return nil, fmt.Errorf("%w: group descriptor size %d", errNoExt4, descSize)
		}
	}
	firstData := int64(le.Uint32(sb[0x14:]))
	perGroup := int64(le.Uint32(sb[0x20:]))
	ipg := int64(le.Uint32(sb[0x28:]))
	inodeSize := int64(128)
	if le.Uint32(sb[0x4C:]) >= 1 {
		inodeSize = int64(le.Uint16(sb[0x58:]))
	}
	switch {
	case blocks <= firstData || blocks > imageSize/bs:
		return nil, fmt.Errorf("%w: %d blocks of %d bytes in an image of %d bytes", errNoExt4, blocks, bs, imageSize)
	case perGroup <= 0 || perGroup > 8*bs || ipg <= 0 || ipg > 8*bs:
		return nil, fmt.Errorf("%w: %d blocks and %d inodes per group", errNoExt4, perGroup, ipg)
	case inodeSize < 128 || inodeSize > bs || inodeSize&(inodeSize-1) != 0:
		return nil, fmt.Errorf("%w: inode size %d", errNoExt4, inodeSize)
	}
	groups := (blocks - firstData + perGroup - 1) / perGroup
	gdtOff, gdtLen := (firstData+1)*bs, groups*descSize
	if gdtOff+gdtLen > imageSize {
		return nil, fmt.Errorf("%w: %d group descriptors past the image's end", errNoExt4, groups)
	}
	return &ext4Layout{
		blockSize: bs, inodeSize: inodeSize, inodesPerGroup: ipg,
		inodesCount: int64(le.Uint32(sb[0x00:])),
		gdtOff:      gdtOff, gdtLen: gdtLen, descSize: descSize,
		unusedKept: roCompat&(roGdtCsum|roMetaCsum) != 0,
		meta:       [][2]int64{{0, gdtOff + gdtLen}},
	}, nil
}

// groups adds the bitmaps and inode tables the group descriptors gdt
// (the gdtLen bytes at gdtOff) point at.
func (l *ext4Layout) groups(gdt []byte, imageSize int64) error {
	le := binary.LittleEndian
	descSize := l.descSize
	table := l.inodesPerGroup * l.inodeSize
	for g := int64(0); (g+1)*descSize <= int64(len(gdt)); g++ {
		d := gdt[g*descSize : (g+1)*descSize]
		blockBitmap, inodeBitmap, inodeTable := int64(le.Uint32(d[0x0:])), int64(le.Uint32(d[0x4:])), int64(le.Uint32(d[0x8:]))
		if descSize >= 64 {
			blockBitmap |= int64(le.Uint32(d[0x20:])) << 32
			inodeBitmap |= int64(le.Uint32(d[0x24:])) << 32
			inodeTable |= int64(le.Uint32(d[0x28:])) << 32
		}
		used := table
		if l.unusedKept {
			unused := int64(le.Uint16(d[0x1C:]))
			if descSize >= 64 {
				unused |= int64(le.Uint16(d[0x32:])) << 16
			}
			used = max(l.inodesPerGroup-unused, 0) * l.inodeSize
		}
		for _, r := range [][2]int64{
			{blockBitmap * l.blockSize, (blockBitmap + 1) * l.blockSize},
			{inodeBitmap * l.blockSize, (inodeBitmap + 1) * l.blockSize},
			{inodeTable * l.blockSize, inodeTable*l.blockSize + table},
		} {
			if r[0] < l.blockSize || r[1] > imageSize {
				return fmt.Errorf("%w: group %d's bitmaps or inode table at [%d, %d), past the image's end %d", errNoExt4, g, r[0], r[1], imageSize)
			}
			l.meta = append(l.meta, r)
		}
		l.tables = append(l.tables, [2]int64{inodeTable * l.blockSize, inodeTable*l.blockSize + used})
	}
	return nil
}

// dirBlocks appends to out the byte ranges of the directory blocks the
// inodes in b point at (b holds whole inodes of a table, the first being
// inode number first): the extents of an extent tree held in the inode
// (depth 0), or the direct blocks of a block map. It returns how many
// directories it could not follow (deeper trees, indirect blocks).
func (l *ext4Layout) dirBlocks(b []byte, first int64, imageSize int64, out [][2]int64) ([][2]int64, int) {
	le := binary.LittleEndian
	skipped := 0
	add := func(start, n int64) {
		lo, hi := start*l.blockSize, (start+n)*l.blockSize
		if start > 0 && n > 0 && hi <= imageSize {
			out = append(out, [2]int64{lo, hi})
		}
	}
	for k := int64(0); (k+1)*l.inodeSize <= int64(len(b)); k++ {
		if first+k > l.inodesCount {
			break
		}
		in := b[k*l.inodeSize : (k+1)*l.inodeSize]
		mode, links, flags := le.Uint16(in[0x0:]), le.Uint16(in[0x1A:]), le.Uint32(in[0x20:])
		if mode&modeMask != modeDir || links == 0 || flags&flagInline != 0 {
			continue
		}
		blk := in[0x28 : 0x28+60]
		if flags&flagExtents == 0 {
			for j := 0; j < 12; j++ {
				add(int64(le.Uint32(blk[4*j:])), 1)
			}
			if le.Uint32(blk[48:]) != 0 {
				skipped++
			}
			continue
		}
		entries, depth := int(le.Uint16(blk[2:])), le.Uint16(blk[6:])
		if le.Uint16(blk[0:]) != 0xF30A || depth != 0 || entries > 4 {
			skipped++
			continue
		}
		for j := range entries {
			e := blk[12+12*j:]
			n := int64(le.Uint16(e[4:]))
			if n > 32768 {
				continue // uninitialized: reads as zeros, costs nothing
			}
			add(int64(le.Uint16(e[6:]))<<32|int64(le.Uint32(e[8:])), n)
		}
	}
	return out, skipped
}
