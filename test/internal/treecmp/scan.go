package treecmp

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Entry is what Scan records of one path.
type Entry struct {
	Mode   uint32 // st_mode: type and all permission bits
	UID    uint32
	GID    uint32
	Nlink  uint64
	Size   int64
	Mtime  unix.Timespec
	Rdev   uint64            // character and block devices
	Digest string            // regular files: sha256 of the content
	Target string            // symlinks
	Xattrs map[string]string // all namespaces; never read for symlinks

	inode devIno
}

type devIno struct{ dev, ino uint64 }

func (e *Entry) typeName() string {
	switch e.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFCHR:
		return "char device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	}
	return fmt.Sprintf("type %#o", e.Mode&unix.S_IFMT)
}

// Tree is a scanned directory tree, keyed by path relative to its root
// (components joined by "/", no leading slash).
type Tree struct {
	Entries map[string]*Entry
	groups  map[devIno][]string // sorted paths of each non-directory inode
}

// linkGroup names the set of paths sharing p's inode, NUL-separated.
func (t Tree) linkGroup(p string, e *Entry) string {
	if e.Mode&unix.S_IFMT == unix.S_IFDIR {
		return p
	}
	return strings.Join(t.groups[e.inode], "\x00")
}

// Scan records every entry below root.
func Scan(root string) (Tree, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Tree{}, fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(fd)
	t := Tree{Entries: map[string]*Entry{}, groups: map[devIno][]string{}}
	if err := t.scanDir(fd, ""); err != nil {
		return Tree{}, fmt.Errorf("scan %s: %w", root, err)
	}
	for _, g := range t.groups {
		slices.Sort(g)
	}
	return t, nil
}

// scanDir records the children of the directory open at dirfd, whose path
// is rel; it never builds a path longer than one name for a system call.
func (t Tree) scanDir(dirfd int, rel string) error {
	names, err := readNames(dirfd)
	if err != nil {
		return fmt.Errorf("%s: %w", displayPath(rel), err)
	}
	for _, name := range names {
		p := name
		if rel != "" {
			p = rel + "/" + name
		}
		if err := t.scanEntry(dirfd, name, p); err != nil {
			return fmt.Errorf("%s: %w", displayPath(p), err)
		}
	}
	return nil
}

func (t Tree) scanEntry(dirfd int, name, p string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("fstatat: %w", err)
	}
	e := &Entry{
		Mode: st.Mode, UID: st.Uid, GID: st.Gid, Nlink: st.Nlink, Size: st.Size,
		Mtime: st.Mtim, inode: devIno{st.Dev, st.Ino},
	}
	t.Entries[p] = e
	var err error
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		t.groups[e.inode] = append(t.groups[e.inode], p)
		e.Target, err = readlinkat(dirfd, name)
		return err
	case unix.S_IFDIR:
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		defer unix.Close(fd)
		if e.Xattrs, err = fdXattrs(fd); err != nil {
			return err
		}
		return t.scanDir(fd, p)
	case unix.S_IFREG:
		t.groups[e.inode] = append(t.groups[e.inode], p)
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		defer unix.Close(fd)
		if e.Xattrs, err = fdXattrs(fd); err != nil {
			return err
		}
		e.Digest, err = digest(fd, st.Size)
		return err
	default:
		// Devices and fifos: an O_PATH descriptor does not open the device
		// (or block on the fifo); its xattrs are read through /proc.
		t.groups[e.inode] = append(t.groups[e.inode], p)
		e.Rdev = st.Rdev
		fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		defer unix.Close(fd)
		e.Xattrs, err = pathFDXattrs(fd)
		return err
	}
}

func readNames(dirfd int) ([]string, error) {
	var names []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(dirfd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("getdents: %w", err)
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	slices.Sort(names)
	return names, nil
}

func readlinkat(dirfd int, name string) (string, error) {
	buf := make([]byte, unix.PathMax+1)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", fmt.Errorf("readlinkat: %w", err)
	}
	return string(buf[:n]), nil
}

// fdXattrs reads all extended attributes of the file open at fd.
func fdXattrs(fd int) (map[string]string, error) {
	return readXattrs(
		func(dst []byte) (int, error) { return unix.Flistxattr(fd, dst) },
		func(key string, dst []byte) (int, error) { return unix.Fgetxattr(fd, key, dst) })
}

// pathFDXattrs reads the extended attributes of the file behind an O_PATH
// descriptor, which f*xattr calls do not accept, through its /proc name.
func pathFDXattrs(fd int) (map[string]string, error) {
	p := "/proc/self/fd/" + strconv.Itoa(fd)
	return readXattrs(
		func(dst []byte) (int, error) { return unix.Listxattr(p, dst) },
		func(key string, dst []byte) (int, error) { return unix.Getxattr(p, key, dst) })
}

func readXattrs(list func(dst []byte) (int, error), get func(key string, dst []byte) (int, error)) (map[string]string, error) {
	n, err := list(nil)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	names := make([]byte, n)
	if n, err = list(names); err != nil {
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	var out map[string]string
	for key := range strings.SplitSeq(string(names[:n]), "\x00") {
		if key == "" {
			continue
		}
		size, err := get(key, nil)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", key, err)
		}
		val := make([]byte, size)
		if size, err = get(key, val); err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", key, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[key] = string(val[:size])
	}
	return out, nil
}

// zeros stands in for the holes of sparse files, which are hashed without
// being read.
var zeros = make([]byte, 1<<20)

// digest hashes a regular file's content, skipping the reads of holes.
func digest(fd int, size int64) (string, error) {
	h := sha256.New()
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // only a hole is left
		} else if err != nil {
			data = off // SEEK_DATA unsupported: read everything
		}
		hashZeros(h, data-off)
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil || hole > size {
			hole = size
		}
		if err := hashRange(h, fd, data, hole); err != nil {
			return "", err
		}
		off = hole
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func hashZeros(h hash.Hash, n int64) {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		h.Write(zeros[:k])
		n -= k
	}
}

func hashRange(h hash.Hash, fd int, from, to int64) error {
	buf := make([]byte, 1<<20)
	for from < to {
		n, err := unix.Pread(fd, buf[:min(int64(len(buf)), to-from)], from)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read at %d: %w", from, err)
		}
		if n == 0 {
			return fmt.Errorf("read at %d: %w", from, io.ErrUnexpectedEOF)
		}
		h.Write(buf[:n])
		from += int64(n)
	}
	return nil
}
