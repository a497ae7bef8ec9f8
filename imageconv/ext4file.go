package imageconv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
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

// ext4 on-disk offsets used by removeLostFound (see the kernel's
// Documentation/filesystems/ext4).
const (
	ext4Block          = 4096
	sbOffset           = 1024
	sbInodesPerGroup   = 0x28
	sbInodeSize        = 0x58
	sbMagic            = 0x38
	gdInodeTableLo     = 0x08
	inodeLinksCount    = 0x1a
	inodeBlock         = 0x28
	extentMagic        = 0xf30a
	rootInode          = 2
	lostFoundInodeHint = 11
)

// removeLostFound unlinks the lost+found directory the ext4 writer always
// creates, so the rootfs holds exactly what the image holds. The inode and
// its block stay allocated but unreachable, which the read-only kernel
// driver does not mind.
func removeLostFound(f *os.File) error {
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		return err
	}
	le := binary.LittleEndian
	if le.Uint16(sb[sbMagic:]) != 0xef53 {
		return errors.New("no ext4 superblock")
	}
	inodesPerGroup := int64(le.Uint32(sb[sbInodesPerGroup:]))
	inodeSize := int64(le.Uint16(sb[sbInodeSize:]))
	gd := make([]byte, 32)
	if _, err := f.ReadAt(gd, ext4Block); err != nil {
		return err
	}
	if inodesPerGroup < rootInode {
		return errors.New("root inode is not in group 0")
	}
	inodeOff := int64(le.Uint32(gd[gdInodeTableLo:]))*ext4Block + (rootInode-1)*inodeSize
	ino := make([]byte, 128)
	if _, err := f.ReadAt(ino, inodeOff); err != nil {
		return err
	}
	ext := ino[inodeBlock:]
	if le.Uint16(ext) != extentMagic || le.Uint16(ext[2:]) < 1 || le.Uint16(ext[6:]) != 0 {
		return errors.New("root directory has no simple extent tree")
	}
	first := int64(le.Uint16(ext[12+6:]))<<32 | int64(le.Uint32(ext[12+8:]))
	blk := make([]byte, ext4Block)
	if _, err := f.ReadAt(blk, first*ext4Block); err != nil {
		return err
	}
	// The block starts ".", "..", then the lowest inode number, which is
	// the writer's lost+found.
	dot := int(le.Uint16(blk[4:]))
	if dot < 12 || dot+8 > len(blk) {
		return errors.New("bad \".\" entry")
	}
	dotdot := dot + int(le.Uint16(blk[dot+4:]))
	if dotdot+8 > len(blk) {
		return errors.New("bad \"..\" entry")
	}
	nameLen := int(blk[dotdot+6])
	if dotdot+8+nameLen > len(blk) || string(blk[dotdot+8:dotdot+8+nameLen]) != "lost+found" ||
		le.Uint32(blk[dotdot:]) != lostFoundInodeHint {
		return fmt.Errorf("third root entry is not the writer's lost+found")
	}
	le.PutUint16(blk[dot+4:], le.Uint16(blk[dot+4:])+le.Uint16(blk[dotdot+4:]))
	if _, err := f.WriteAt(blk, first*ext4Block); err != nil {
		return err
	}
	le.PutUint16(ino[inodeLinksCount:], le.Uint16(ino[inodeLinksCount:])-1)
	if _, err := f.WriteAt(ino[inodeLinksCount:inodeLinksCount+2], inodeOff+inodeLinksCount); err != nil {
		return err
	}
	return freeLostFound(f, sb, gd, inodeSize)
}

// freeLostFound releases the unlinked lost+found inode and its directory
// block, so that e2fsck finds nothing unattached.
func freeLostFound(f *os.File, sb, gd []byte, inodeSize int64) error {
	le := binary.LittleEndian
	off := int64(le.Uint32(gd[gdInodeTableLo:]))*ext4Block + (lostFoundInodeHint-1)*inodeSize
	ino := make([]byte, inodeSize)
	if _, err := f.ReadAt(ino, off); err != nil {
		return err
	}
	ext := ino[inodeBlock:]
	if le.Uint16(ext) != extentMagic || le.Uint16(ext[2:]) != 1 || le.Uint16(ext[6:]) != 0 || le.Uint16(ext[12+4:]) != 1 {
		return errors.New("lost+found is not one directory block")
	}
	block := int64(le.Uint16(ext[12+6:]))<<32 | int64(le.Uint32(ext[12+8:]))
	perGroup := int64(le.Uint32(sb[0x20:]))
	if perGroup == 0 {
		return errors.New("bad blocks per group")
	}
	clearBit := func(bitmapBlock, bit int64) error {
		var b [1]byte
		at := bitmapBlock*ext4Block + bit/8
		if _, err := f.ReadAt(b[:], at); err != nil {
			return err
		}
		b[0] &^= 1 << (bit % 8)
		_, err := f.WriteAt(b[:], at)
		return err
	}
	// The block may be in any group; the inode is in group 0.
	bg := block / perGroup
	bgd := make([]byte, 32)
	if _, err := f.ReadAt(bgd, ext4Block+bg*32); err != nil {
		return err
	}
	if err := clearBit(int64(le.Uint32(bgd[0x0:])), block%perGroup); err != nil {
		return err
	}
	le.PutUint16(bgd[0xc:], le.Uint16(bgd[0xc:])+1) // free blocks
	if _, err := f.WriteAt(bgd, ext4Block+bg*32); err != nil {
		return err
	}
	if _, err := f.ReadAt(gd, ext4Block); err != nil { // group 0, maybe just written
		return err
	}
	if err := clearBit(int64(le.Uint32(gd[0x4:])), lostFoundInodeHint-1); err != nil {
		return err
	}
	if _, err := f.WriteAt(make([]byte, inodeSize), off); err != nil {
		return err
	}
	le.PutUint16(gd[0xe:], le.Uint16(gd[0xe:])+1)   // free inodes
	le.PutUint16(gd[0x10:], le.Uint16(gd[0x10:])-1) // directories
	if _, err := f.WriteAt(gd, ext4Block); err != nil {
		return err
	}
	le.PutUint32(sb[0x0c:], le.Uint32(sb[0x0c:])+1) // free blocks
	le.PutUint32(sb[0x10:], le.Uint32(sb[0x10:])+1) // free inodes
	_, err := f.WriteAt(sb, sbOffset)
	return err
}

// padInodeBitmaps sets the bits past the last inode of each group's inode
// bitmap, as mke2fs does and e2fsck expects; the ext4 writer leaves them 0.
func padInodeBitmaps(f *os.File) error {
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		return err
	}
	le := binary.LittleEndian
	blocks := int64(le.Uint32(sb[0x04:]))
	perGroup := int64(le.Uint32(sb[0x20:]))
	ipg := int64(le.Uint32(sb[sbInodesPerGroup:]))
	if perGroup == 0 || ipg == 0 || ipg > ext4Block*8 {
		return errors.New("bad superblock geometry")
	}
	if ipg == ext4Block*8 {
		return nil
	}
	groups := (blocks + perGroup - 1) / perGroup
	gds := make([]byte, groups*32)
	if _, err := f.ReadAt(gds, ext4Block); err != nil {
		return err
	}
	bm := make([]byte, ext4Block)
	for g := range groups {
		at := int64(le.Uint32(gds[g*32+0x4:])) * ext4Block
		if _, err := f.ReadAt(bm, at); err != nil {
			return err
		}
		for bit := ipg; bit < ext4Block*8; bit++ {
			bm[bit/8] |= 1 << (bit % 8)
		}
		if _, err := f.WriteAt(bm, at); err != nil {
			return err
		}
	}
	return nil
}
