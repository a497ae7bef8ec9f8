package imageconv

import (
	"archive/tar"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// ErrUnsafeEntry is returned for a layer entry that would write outside the
// image root or that cannot be applied.
var ErrUnsafeEntry = errors.New("unsafe layer entry")

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"

	// maxSymlinkHops bounds symlink resolution, as the kernel's ELOOP does.
	maxSymlinkHops = 40
	// maxEntrySize bounds a single file (ext4 as written supports 128 GiB).
	maxEntrySize = 128 << 30
)

// pos names one entry of one layer: the ordinal of its header in the tar.
type pos struct{ layer, ord int32 }

var noPos = pos{-1, -1}

// node is a path in the merged tree. Directories hold children; every other
// type points at an inode, which hard links share.
type node struct {
	children map[string]*node // nil unless a directory
	ino      *inode           // nil for directories
	// header is the entry whose header gives a directory its metadata, or
	// that put a non-directory at this path; noPos for implicit directories.
	header pos
	// layer is the last layer that wrote this path, for opaque directories.
	layer int32
}

func (n *node) isDir() bool { return n.children != nil }

// inode is a non-directory object; several paths may link to it.
type inode struct {
	source   pos    // the entry that created it and holds its content
	typeflag byte   // tar type of the object
	linkname string // symlink target
	// override holds metadata a later hard-link entry applied to the inode,
	// as extracting that entry with chown/chmod/utimes would.
	override *linkMeta
}

type linkMeta struct {
	mode       int64
	uid, gid   int
	mtime      time.Time
	atime      time.Time
	paxRecords map[string]string
}

// tree is the merged rootfs of all layers applied so far, metadata only.
type tree struct {
	root    *node
	inodes  []*inode // every inode ever created, for placeholders
	layer   int32
	ord     int32
	entries []int32 // entries per layer, once the layer is done
}

func newTree() *tree {
	return &tree{root: &node{children: map[string]*node{}, header: noPos, layer: -1}}
}

// cleanName validates an entry name and returns it relative to the root
// ("" for the root itself), split into components.
func cleanName(name string) ([]string, error) {
	if strings.HasPrefix(name, "/") {
		return nil, fmt.Errorf("%w: %q is an absolute path", ErrUnsafeEntry, name)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return nil, fmt.Errorf("%w: %q contains a NUL byte", ErrUnsafeEntry, name)
	}
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return nil, fmt.Errorf("%w: %q contains a .. component", ErrUnsafeEntry, name)
		}
		if len(p) > 255 {
			return nil, fmt.Errorf("%w: %q has a component longer than 255 bytes", ErrUnsafeEntry, name)
		}
		parts = append(parts, p)
	}
	return parts, nil
}

// walkDir resolves the directory named by parts, following symlinks within
// the root. With create, missing directories are made (as extraction does);
// otherwise a missing component returns nil, nil.
func (t *tree) walkDir(parts []string, create bool, what string) (*node, error) {
	hops := 0
	stack, err := t.walk([]*node{t.root}, parts, create, what, &hops)
	if err != nil || stack == nil {
		return nil, err
	}
	return stack[len(stack)-1], nil
}

// walk descends from the directory chain stack (root first) through parts and
// returns the chain of the directory reached, or nil if it does not exist.
func (t *tree) walk(stack []*node, parts []string, create bool, what string, hops *int) ([]*node, error) {
	for _, p := range parts {
		cur := stack[len(stack)-1]
		switch p {
		case "", ".":
			continue
		case "..":
			if len(stack) == 1 {
				return nil, fmt.Errorf("%w: %s: a symlink leads out of the image root", ErrUnsafeEntry, what)
			}
			stack = stack[:len(stack)-1]
			continue
		}
		child := cur.children[p]
		switch {
		case child == nil:
			if !create {
				return nil, nil
			}
			child = &node{children: map[string]*node{}, header: noPos, layer: t.layer}
			cur.children[p] = child
			stack = append(stack, child)
		case child.isDir():
			stack = append(stack, child)
		case child.ino.typeflag == tar.TypeSymlink:
			*hops++
			if *hops > maxSymlinkHops {
				return nil, fmt.Errorf("%w: %s: too many levels of symbolic links", ErrUnsafeEntry, what)
			}
			target := child.ino.linkname
			// Copy so that the resolution does not alias our stack.
			next := append([]*node(nil), stack...)
			if strings.HasPrefix(target, "/") {
				next = []*node{t.root}
			}
			res, err := t.walk(next, strings.Split(target, "/"), create, what, hops)
			if err != nil || res == nil {
				return res, err
			}
			stack = res
		default:
			return nil, fmt.Errorf("%w: %s: %q is not a directory", ErrUnsafeEntry, what, p)
		}
	}
	return stack, nil
}

// apply merges one tar header of the current layer into the tree.
func (t *tree) apply(hdr *tar.Header) error {
	at := pos{t.layer, t.ord}
	t.ord++
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse, tar.TypeLink, tar.TypeSymlink,
		tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
	default:
		return fmt.Errorf("%w: %q has unsupported type %q", ErrUnsafeEntry, hdr.Name, hdr.Typeflag)
	}
	if hdr.Size < 0 || hdr.Size > maxEntrySize {
		return fmt.Errorf("%w: %q has size %d (limit %d)", ErrUnsafeEntry, hdr.Name, hdr.Size, int64(maxEntrySize))
	}
	parts, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if len(parts) == 0 {
		return nil // the root itself: extraction leaves it alone, so do we
	}
	base := parts[len(parts)-1]
	for _, p := range parts[:len(parts)-1] {
		if strings.HasPrefix(p, whiteoutMeta) {
			return nil // inside an AUFS metadata directory such as .wh..wh.plnk
		}
	}
	dir, err := t.walkDir(parts[:len(parts)-1], true, hdr.Name)
	if err != nil {
		return err
	}
	switch {
	case base == whiteoutOpaque:
		pruneLower(dir, t.layer)
		return nil
	case strings.HasPrefix(base, whiteoutMeta):
		return nil
	case strings.HasPrefix(base, whiteoutPrefix):
		delete(dir.children, base[len(whiteoutPrefix):])
		return nil
	}

	existing := dir.children[base]
	if hdr.Typeflag == tar.TypeDir {
		if existing != nil && existing.isDir() {
			existing.header, existing.layer = at, t.layer
			return nil
		}
		dir.children[base] = &node{children: map[string]*node{}, header: at, layer: t.layer}
		return nil
	}

	n := &node{header: at, layer: t.layer}
	if hdr.Typeflag == tar.TypeLink {
		target, err := t.lookupLink(hdr)
		if err != nil {
			return err
		}
		if target == existing {
			return nil // linking a path to itself changes nothing
		}
		n.ino = target.ino
		n.ino.override = &linkMeta{
			mode: hdr.Mode, uid: hdr.Uid, gid: hdr.Gid,
			mtime: ext4Time(hdr.ModTime), atime: ext4Time(hdr.AccessTime), paxRecords: xattrRecords(hdr),
		}
	} else {
		n.ino = &inode{source: at, typeflag: hdr.Typeflag}
		t.inodes = append(t.inodes, n.ino)
		if hdr.Typeflag == tar.TypeSymlink {
			n.ino.linkname = hdr.Linkname
		}
	}
	dir.children[base] = n
	return nil
}

// lookupLink finds the existing non-directory a hard-link entry names.
func (t *tree) lookupLink(hdr *tar.Header) (*node, error) {
	parts, err := cleanName(hdr.Linkname)
	if err != nil {
		return nil, fmt.Errorf("hard link %q: %w", hdr.Name, err)
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("%w: hard link %q points at the root", ErrUnsafeEntry, hdr.Name)
	}
	dir, err := t.walkDir(parts[:len(parts)-1], false, hdr.Linkname)
	if err != nil {
		return nil, err
	}
	var target *node
	if dir != nil {
		target = dir.children[parts[len(parts)-1]]
	}
	switch {
	case target == nil:
		return nil, fmt.Errorf("%w: hard link %q points at %q, which does not exist", ErrUnsafeEntry, hdr.Name, hdr.Linkname)
	case target.isDir():
		return nil, fmt.Errorf("%w: hard link %q points at directory %q", ErrUnsafeEntry, hdr.Name, hdr.Linkname)
	}
	return target, nil
}

// pruneLower removes everything under dir that no entry of this layer wrote.
func pruneLower(dir *node, layer int32) {
	for name, c := range dir.children {
		if c.layer < layer {
			delete(dir.children, name)
		} else if c.isDir() {
			pruneLower(c, layer)
		}
	}
}

func xattrRecords(hdr *tar.Header) map[string]string {
	var m map[string]string
	for k, v := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			if m == nil {
				m = map[string]string{}
			}
			m[k] = v
		}
	}
	return m
}

// endLayer records the layer's entry count and moves to the next layer.
func (t *tree) endLayer() {
	t.entries = append(t.entries, t.ord)
	t.layer++
	t.ord = 0
}

// action is what to write to the merged stream when pass two reaches an
// entry: a directory's metadata, an inode under its first path with the
// other paths as hard links to it, or a placeholder.
type action struct {
	path  string
	links []string
	ino   *inode // nil for a directory
	// placeholder marks an inode no path reaches any more. It is still
	// written, with zeros for content, under the shadow directory that
	// Flatten deletes afterwards: the blocks it takes keep every later
	// file at the offset it has in images without the upper layers that
	// removed it, so images sharing a base share chunks.
	placeholder bool
}

// plan walks the final tree and says, for each entry of each layer, what the
// merged stream must carry when that entry is read again. Inodes that no
// path reaches get placeholders under shadow, a top-level name the image
// does not use. It also reports whether the image has its own top-level
// lost+found.
func (t *tree) plan() (acts [][]*action, shadow string, hasLostFound bool) {
	acts = make([][]*action, len(t.entries))
	for i, n := range t.entries {
		acts[i] = make([]*action, n)
	}
	shadow = ".sluice-shadow"
	for n := 1; t.root.children[shadow] != nil; n++ {
		shadow = fmt.Sprintf(".sluice-shadow-%d", n)
	}
	inodes := map[*inode]*action{}
	var visit func(prefix string, dir *node)
	visit = func(prefix string, dir *node) {
		for name, c := range dir.children {
			p := prefix + name
			if c.isDir() {
				if c.header != noPos {
					acts[c.header.layer][c.header.ord] = &action{path: p}
				}
				visit(p+"/", c)
				continue
			}
			a := inodes[c.ino]
			if a == nil {
				a = &action{ino: c.ino}
				inodes[c.ino] = a
			}
			if c.header == c.ino.source {
				a.links = append(a.links, a.path)
				a.path = p
			} else {
				a.links = append(a.links, p)
			}
		}
	}
	visit("", t.root)
	for ino, a := range inodes {
		links := a.links[:0]
		for _, l := range a.links {
			if l != "" {
				links = append(links, l)
			}
		}
		sort.Strings(links)
		if a.path == "" { // the creating path is gone: promote a survivor
			a.path, links = links[0], links[1:]
		}
		a.links = links
		acts[ino.source.layer][ino.source.ord] = a
	}
	for _, ino := range t.inodes {
		if _, live := inodes[ino]; !live {
			acts[ino.source.layer][ino.source.ord] = &action{
				path:        fmt.Sprintf("%s/%d-%d", shadow, ino.source.layer, ino.source.ord),
				ino:         ino,
				placeholder: true,
			}
		}
	}
	lf := t.root.children["lost+found"]
	return acts, shadow, lf != nil && lf.isDir()
}
