// Package imagebuild writes OCI image layers and images for tests.
//
// A Builder makes the layers of one image. Like real image builders
// (buildkit, docker), every layer it writes carries a header for each parent
// directory of what it adds or deletes, with that directory's metadata as
// last declared in this or an earlier layer (DefaultDir if never declared),
// so directory mtimes and modes after extraction are defined by the image,
// not by the time of extraction. All headers use the PAX format, so mtimes
// keep their nanoseconds and xattrs travel as SCHILY.xattr records.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"maps"
	"path"
	"strings"
	"time"
)

// Meta is the metadata of one entry.
type Meta struct {
	Mode    int64 // permission bits, including setuid, setgid and sticky
	UID     int
	GID     int
	ModTime time.Time
	Xattrs  map[string]string // e.g. "user.k", "security.capability"
}

// DefaultDir is the metadata of parent directories never declared with Dir.
var DefaultDir = Meta{Mode: 0o755, ModTime: time.Unix(1_600_000_000, 0)}

// Builder tracks directory metadata across the layers of one image.
type Builder struct {
	dirs map[string]Meta
}

// New returns a Builder for a new image.
func New() *Builder { return &Builder{dirs: map[string]Meta{}} }

// Layer starts the next layer of the image. Entries are written in call
// order; a directory must be declared before the first entry below it.
func (b *Builder) Layer() *Layer {
	l := &Layer{b: b, written: map[string]bool{}}
	l.tw = tar.NewWriter(&l.buf)
	return l
}

// Layer is one layer being written. Its methods record the first error,
// which Gzip and Tar return.
type Layer struct {
	b       *Builder
	buf     bytes.Buffer
	tw      *tar.Writer
	written map[string]bool // paths with a header in this layer
	err     error
}

// Dir adds a directory (merged with an existing one on extraction).
func (l *Layer) Dir(p string, m Meta) *Layer {
	if l.written[p] {
		l.fail(fmt.Errorf("directory %q already has a header in this layer: declare it before its children", p))
		return l
	}
	l.b.dirs[p] = m
	return l.add(&tar.Header{Typeflag: tar.TypeDir, Name: p + "/"}, m, nil)
}

// File adds a regular file.
func (l *Layer) File(p string, content []byte, m Meta) *Layer {
	return l.add(&tar.Header{Typeflag: tar.TypeReg, Name: p, Size: int64(len(content))}, m, content)
}

// Symlink adds a symbolic link.
func (l *Layer) Symlink(p, target string, m Meta) *Layer {
	return l.add(&tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: target}, m, nil)
}

// Hardlink adds a hard link to target, a path in this or a lower layer.
// Extraction applies m to the shared inode, so real builders repeat the
// target's metadata here.
func (l *Layer) Hardlink(p, target string, m Meta) *Layer {
	return l.add(&tar.Header{Typeflag: tar.TypeLink, Name: p, Linkname: target}, m, nil)
}

// Char adds a character device.
func (l *Layer) Char(p string, major, minor int64, m Meta) *Layer {
	return l.add(&tar.Header{Typeflag: tar.TypeChar, Name: p, Devmajor: major, Devminor: minor}, m, nil)
}

// Block adds a block device.
func (l *Layer) Block(p string, major, minor int64, m Meta) *Layer {
	return l.add(&tar.Header{Typeflag: tar.TypeBlock, Name: p, Devmajor: major, Devminor: minor}, m, nil)
}

// Fifo adds a named pipe.
func (l *Layer) Fifo(p string, m Meta) *Layer {
	return l.add(&tar.Header{Typeflag: tar.TypeFifo, Name: p}, m, nil)
}

// Whiteout deletes p, and everything below it, from the lower layers.
func (l *Layer) Whiteout(p string) *Layer {
	l.forget(p, true)
	dir, base := path.Split(p)
	return l.add(&tar.Header{Typeflag: tar.TypeReg, Name: dir + ".wh." + base}, Meta{}, nil)
}

// Opaque hides everything the lower layers have below dir; the directory
// itself stays, with the metadata last declared for it.
func (l *Layer) Opaque(dir string) *Layer {
	l.forget(dir, false)
	if !l.written[dir] {
		l.Dir(dir, l.dirMeta(dir))
	}
	return l.add(&tar.Header{Typeflag: tar.TypeReg, Name: dir + "/.wh..wh..opq"}, Meta{}, nil)
}

// Raw writes hdr and data as they are, with no parent directories: for
// entries the other methods cannot express.
func (l *Layer) Raw(hdr *tar.Header, data []byte) *Layer {
	l.write(hdr, data)
	return l
}

// Tar finishes the layer and returns the uncompressed tar.
func (l *Layer) Tar() ([]byte, error) {
	if l.err == nil {
		l.fail(l.tw.Close())
	}
	return l.buf.Bytes(), l.err
}

// Gzip finishes the layer and returns it gzip-compressed.
func (l *Layer) Gzip() ([]byte, error) {
	t, err := l.Tar()
	if err != nil {
		return nil, err
	}
	return Gzip(t)
}

// Gzip compresses a tar stream.
func Gzip(tarball []byte) ([]byte, error) {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	if _, err := zw.Write(tarball); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func (l *Layer) add(hdr *tar.Header, m Meta, data []byte) *Layer {
	p := strings.TrimSuffix(hdr.Name, "/")
	l.parents(p)
	if hdr.Typeflag != tar.TypeDir {
		l.forget(p, true)
	}
	hdr.Mode, hdr.Uid, hdr.Gid, hdr.ModTime = m.Mode, m.UID, m.GID, m.ModTime
	for k, v := range m.Xattrs {
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	l.written[p] = true
	l.write(hdr, data)
	return l
}

// parents writes a header for each ancestor of p not yet in this layer,
// outermost first.
func (l *Layer) parents(p string) {
	var anc []string
	for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
		anc = append(anc, d)
	}
	for i := len(anc) - 1; i >= 0; i-- {
		if d := anc[i]; !l.written[d] {
			l.add(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/"}, l.dirMeta(d), nil)
		}
	}
}

func (l *Layer) dirMeta(d string) Meta {
	if m, ok := l.b.dirs[d]; ok {
		return m
	}
	return DefaultDir
}

// forget drops the directory metadata tracked below p, and for p itself if
// self is set, once they are deleted or replaced.
func (l *Layer) forget(p string, self bool) {
	for d := range maps.Clone(l.b.dirs) {
		if (self && d == p) || strings.HasPrefix(d, p+"/") {
			delete(l.b.dirs, d)
		}
	}
}

func (l *Layer) write(hdr *tar.Header, data []byte) {
	if l.err != nil {
		return
	}
	hdr.Format = tar.FormatPAX
	if err := l.tw.WriteHeader(hdr); err != nil {
		l.fail(fmt.Errorf("header %q: %w", hdr.Name, err))
		return
	}
	if _, err := l.tw.Write(data); err != nil {
		l.fail(fmt.Errorf("data %q: %w", hdr.Name, err))
	}
}

func (l *Layer) fail(err error) {
	if l.err == nil && err != nil {
		l.err = err
	}
}
