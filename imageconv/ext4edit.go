package imageconv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ext4Editor makes the few edits the converter needs on a finished image
// from the ext4 writer: unlinking a top-level directory and freeing it,
// everything in it, and their blocks, so e2fsck finds nothing amiss. It
// handles only what that writer produces: 4 KiB blocks, 32-byte group
// descriptors, extent trees of depth 0 or 1, no checksums.
type ext4Editor struct {
	f              readerWriterAt
	sb             []byte
	gds            []byte
	inodesPerGroup int64
	blocksPerGroup int64
	inodeSize      int64
}

var le = binary.LittleEndian

type readerWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

// Offsets from the kernel's Documentation/filesystems/ext4.
const (
	sbFreeBlocks     = 0x0c
	sbFreeInodes     = 0x10
	sbBlocksCount    = 0x04
	sbBlocksPerGroup = 0x20
	sbInodesPerGroup = 0x28
	sbMagic          = 0x38
	sbInodeSize      = 0x58

	gdBlockBitmap = 0x00
	gdInodeBitmap = 0x04
	gdInodeTable  = 0x08
	gdFreeBlocks  = 0x0c
	gdFreeInodes  = 0x0e
	gdUsedDirs    = 0x10
	gdSize        = 32

	inoMode       = 0x00
	inoLinksCount = 0x1a
	inoFlags      = 0x20
	inoBlock      = 0x28
	inoFileACL    = 0x68

	extentMagic     = 0xf30a
	inodeFlagExtent = 0x80000
	sIFMT           = 0xf000
	sIFDIR          = 0x4000
	rootIno         = 2
)

func openExt4Editor(f readerWriterAt) (*ext4Editor, error) {
	e := &ext4Editor{f: f, sb: make([]byte, 1024)}
	if _, err := f.ReadAt(e.sb, 1024); err != nil {
		return nil, err
	}
	if le.Uint16(e.sb[sbMagic:]) != 0xef53 {
		return nil, errors.New("no ext4 superblock")
	}
	e.inodesPerGroup = int64(le.Uint32(e.sb[sbInodesPerGroup:]))
	e.blocksPerGroup = int64(le.Uint32(e.sb[sbBlocksPerGroup:]))
	e.inodeSize = int64(le.Uint16(e.sb[sbInodeSize:]))
	if e.inodesPerGroup == 0 || e.blocksPerGroup == 0 || e.inodeSize < 128 {
		return nil, errors.New("bad superblock geometry")
	}
	groups := (int64(le.Uint32(e.sb[sbBlocksCount:])) + e.blocksPerGroup - 1) / e.blocksPerGroup
	e.gds = make([]byte, groups*gdSize)
	if _, err := f.ReadAt(e.gds, ext4Block); err != nil {
		return nil, err
	}
	return e, nil
}

// flush writes back the group descriptors and the superblock.
func (e *ext4Editor) flush() error {
	if _, err := e.f.WriteAt(e.gds, ext4Block); err != nil {
		return err
	}
	_, err := e.f.WriteAt(e.sb, 1024)
	return err
}

func (e *ext4Editor) gd(group int64) []byte { return e.gds[group*gdSize : (group+1)*gdSize] }

func (e *ext4Editor) inodeOffset(ino int64) (int64, error) {
	g := (ino - 1) / e.inodesPerGroup
	if ino < 1 || g*gdSize >= int64(len(e.gds)) {
		return 0, fmt.Errorf("inode %d out of range", ino)
	}
	return int64(le.Uint32(e.gd(g)[gdInodeTable:]))*ext4Block + (ino-1)%e.inodesPerGroup*e.inodeSize, nil
}

func (e *ext4Editor) readInode(ino int64) ([]byte, int64, error) {
	off, err := e.inodeOffset(ino)
	if err != nil {
		return nil, 0, err
	}
	b := make([]byte, e.inodeSize)
	_, err = e.f.ReadAt(b, off)
	return b, off, err
}

// extent is a run of data blocks.
type extent struct{ start, length int64 }

// blocks returns the data extents of an inode and the extent-tree blocks
// that hold them.
func (e *ext4Editor) blocks(inode []byte) (data []extent, meta []int64, err error) {
	if le.Uint32(inode[inoFlags:])&inodeFlagExtent == 0 {
		return nil, nil, nil // inline data, a short symlink, or a device
	}
	root := inode[inoBlock : inoBlock+60]
	leaves := func(node []byte) ([]extent, error) {
		if le.Uint16(node) != extentMagic {
			return nil, errors.New("bad extent header")
		}
		n := int(le.Uint16(node[2:]))
		if 12+n*12 > len(node) {
			return nil, errors.New("bad extent count")
		}
		var out []extent
		for i := range n {
			x := node[12+12*i:]
			l := int64(le.Uint16(x[4:]))
			if l > 32768 { // an unwritten extent; the writer makes none
				l -= 32768
			}
			out = append(out, extent{int64(le.Uint16(x[6:]))<<32 | int64(le.Uint32(x[8:])), l})
		}
		return out, nil
	}
	switch depth := le.Uint16(root[6:]); depth {
	case 0:
		data, err = leaves(root)
		return data, nil, err
	case 1:
		n := int(le.Uint16(root[2:]))
		if n > 4 {
			return nil, nil, errors.New("bad extent index count")
		}
		blk := make([]byte, ext4Block)
		for i := range n {
			x := root[12+12*i:]
			leaf := int64(le.Uint16(x[8:]))<<32 | int64(le.Uint32(x[4:]))
			if _, err := e.f.ReadAt(blk, leaf*ext4Block); err != nil {
				return nil, nil, err
			}
			d, err := leaves(blk)
			if err != nil {
				return nil, nil, err
			}
			data = append(data, d...)
			meta = append(meta, leaf)
		}
		return data, meta, nil
	default:
		return nil, nil, fmt.Errorf("extent tree of depth %d", depth)
	}
}

// setBit clears or sets one bit of the bitmap in block bm.
func (e *ext4Editor) clearBit(bm, bit int64) error {
	var b [1]byte
	at := bm*ext4Block + bit/8
	if _, err := e.f.ReadAt(b[:], at); err != nil {
		return err
	}
	b[0] &^= 1 << (bit % 8)
	_, err := e.f.WriteAt(b[:], at)
	return err
}

func (e *ext4Editor) freeBlock(blk int64) error {
	g := blk / e.blocksPerGroup
	if g*gdSize >= int64(len(e.gds)) {
		return fmt.Errorf("block %d out of range", blk)
	}
	gd := e.gd(g)
	if err := e.clearBit(int64(le.Uint32(gd[gdBlockBitmap:])), blk%e.blocksPerGroup); err != nil {
		return err
	}
	le.PutUint16(gd[gdFreeBlocks:], le.Uint16(gd[gdFreeBlocks:])+1)
	le.PutUint32(e.sb[sbFreeBlocks:], le.Uint32(e.sb[sbFreeBlocks:])+1)
	return nil
}

// freeInode releases an inode, its blocks and, for a directory, everything
// in it (the writer makes no hard links into these trees but the ones it
// counts, so a link count above one just drops by one).
func (e *ext4Editor) freeInode(ino int64) error {
	inode, off, err := e.readInode(ino)
	if err != nil {
		return err
	}
	isDir := le.Uint16(inode[inoMode:])&sIFMT == sIFDIR
	if links := le.Uint16(inode[inoLinksCount:]); !isDir && links > 1 {
		le.PutUint16(inode[inoLinksCount:], links-1)
		_, err := e.f.WriteAt(inode[inoLinksCount:inoLinksCount+2], off+inoLinksCount)
		return err
	}
	data, meta, err := e.blocks(inode)
	if err != nil {
		return fmt.Errorf("inode %d: %w", ino, err)
	}
	if isDir {
		err := e.eachEntry(data, func(child int64, name string, _ []byte, _ int) error {
			if name == "." || name == ".." {
				return nil
			}
			return e.freeInode(child)
		})
		if err != nil {
			return err
		}
	}
	for _, x := range data {
		for b := x.start; b < x.start+x.length; b++ {
			if err := e.freeBlock(b); err != nil {
				return err
			}
		}
	}
	for _, b := range meta {
		if err := e.freeBlock(b); err != nil {
			return err
		}
	}
	if acl := int64(le.Uint32(inode[inoFileACL:])); acl != 0 {
		if err := e.freeBlock(acl); err != nil {
			return err
		}
	}
	if _, err := e.f.WriteAt(make([]byte, e.inodeSize), off); err != nil {
		return err
	}
	g := (ino - 1) / e.inodesPerGroup
	gd := e.gd(g)
	if err := e.clearBit(int64(le.Uint32(gd[gdInodeBitmap:])), (ino-1)%e.inodesPerGroup); err != nil {
		return err
	}
	le.PutUint16(gd[gdFreeInodes:], le.Uint16(gd[gdFreeInodes:])+1)
	if isDir {
		le.PutUint16(gd[gdUsedDirs:], le.Uint16(gd[gdUsedDirs:])-1)
	}
	le.PutUint32(e.sb[sbFreeInodes:], le.Uint32(e.sb[sbFreeInodes:])+1)
	return nil
}

// eachEntry calls fn for each directory entry in the blocks of data, with
// the block's bytes and the entry's offset in it.
func (e *ext4Editor) eachEntry(data []extent, fn func(ino int64, name string, blk []byte, at int) error) error {
	blk := make([]byte, ext4Block)
	for _, x := range data {
		for b := x.start; b < x.start+x.length; b++ {
			if _, err := e.f.ReadAt(blk, b*ext4Block); err != nil {
				return err
			}
			for at := 0; at+8 <= len(blk); {
				rec := int(le.Uint16(blk[at+4:]))
				nameLen := int(blk[at+6])
				if rec < 8 || at+rec > len(blk) || 8+nameLen > rec {
					return fmt.Errorf("bad directory entry in block %d", b)
				}
				if ino := int64(le.Uint32(blk[at:])); ino != 0 {
					if err := fn(ino, string(blk[at+8:at+8+nameLen]), blk, at); err != nil {
						return err
					}
				}
				at += rec
			}
		}
	}
	return nil
}

// removeTopLevel unlinks directory name from the root and frees it and
// everything in it. It is a no-op if the root has no such entry.
func (e *ext4Editor) removeTopLevel(name string) error {
	root, rootOff, err := e.readInode(rootIno)
	if err != nil {
		return err
	}
	data, _, err := e.blocks(root)
	if err != nil {
		return fmt.Errorf("root directory: %w", err)
	}
	var target int64
	var blkNo int64 = -1
	blk := make([]byte, ext4Block)
	// Find the entry and the block that holds it.
	for _, x := range data {
		for b := x.start; b < x.start+x.length && target == 0; b++ {
			err := e.eachEntry([]extent{{b, 1}}, func(ino int64, n string, bb []byte, at int) error {
				if n != name {
					return nil
				}
				target, blkNo = ino, b
				copy(blk, bb)
				return unlinkEntry(blk, at)
			})
			if err != nil {
				return err
			}
		}
	}
	if target == 0 {
		return nil
	}
	child, _, err := e.readInode(target)
	if err != nil {
		return err
	}
	if le.Uint16(child[inoMode:])&sIFMT != sIFDIR {
		return fmt.Errorf("/%s is not a directory", name)
	}
	if _, err := e.f.WriteAt(blk, blkNo*ext4Block); err != nil {
		return err
	}
	le.PutUint16(root[inoLinksCount:], le.Uint16(root[inoLinksCount:])-1)
	if _, err := e.f.WriteAt(root[inoLinksCount:inoLinksCount+2], rootOff+inoLinksCount); err != nil {
		return err
	}
	return e.freeInode(target)
}

// unlinkEntry removes the entry at offset at of a directory block: the
// previous entry absorbs its space, or, if it is first, its inode is zeroed.
func unlinkEntry(blk []byte, at int) error {
	if at == 0 {
		le.PutUint32(blk[0:], 0)
		return nil
	}
	prev := 0
	for {
		rec := int(le.Uint16(blk[prev+4:]))
		if rec < 8 {
			return errors.New("bad directory entry")
		}
		if prev+rec == at {
			break
		}
		prev += rec
		if prev >= at {
			return errors.New("entry not found in its block")
		}
	}
	le.PutUint16(blk[prev+4:], le.Uint16(blk[prev+4:])+le.Uint16(blk[at+4:]))
	return nil
}

// padInodeBitmaps sets the bits past the last inode of each group's inode
// bitmap, as mke2fs does and e2fsck expects; the ext4 writer leaves them 0.
func (e *ext4Editor) padInodeBitmaps() error {
	ipg := e.inodesPerGroup
	if ipg >= ext4Block*8 {
		return nil
	}
	bm := make([]byte, ext4Block)
	for g := range int64(len(e.gds) / gdSize) {
		at := int64(le.Uint32(e.gd(g)[gdInodeBitmap:])) * ext4Block
		if _, err := e.f.ReadAt(bm, at); err != nil {
			return err
		}
		for bit := ipg; bit < ext4Block*8; bit++ {
			bm[bit/8] |= 1 << (bit % 8)
		}
		if _, err := e.f.WriteAt(bm, at); err != nil {
			return err
		}
	}
	return nil
}
