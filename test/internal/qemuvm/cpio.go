package qemuvm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// Archive is the content of an initramfs: directories, files and
// symbolic links by their path in the guest. Parent directories are added
// as needed. The kernel unpacks concatenated archives one after the other,
// a later one's files replacing an earlier one's.
type Archive struct {
	entries map[string]entry
}

type entry struct {
	mode   uint32 // type and permission bits, as in stat(2)
	src    string // host file with the content, or
	data   []byte // the content
	target string // symlink target
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
)

// NewArchive returns an empty archive.
func NewArchive() *Archive { return &Archive{entries: map[string]entry{}} }

func clean(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

func (a *Archive) parents(p string) {
	for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
		if _, ok := a.entries[d]; !ok {
			a.entries[d] = entry{mode: modeDir | 0o755}
		}
	}
}

// Dir adds a directory.
func (a *Archive) Dir(p string, perm uint32) {
	p = clean(p)
	a.parents(p)
	a.entries[p] = entry{mode: modeDir | perm}
}

// File adds the host file src as p.
func (a *Archive) File(p, src string, perm uint32) {
	p = clean(p)
	a.parents(p)
	a.entries[p] = entry{mode: modeFile | perm, src: src}
}

// Bytes adds a file with the content data.
func (a *Archive) Bytes(p string, data []byte, perm uint32) {
	p = clean(p)
	a.parents(p)
	a.entries[p] = entry{mode: modeFile | perm, data: data}
}

// Symlink adds a symbolic link.
func (a *Archive) Symlink(p, target string) {
	p = clean(p)
	a.parents(p)
	a.entries[p] = entry{mode: modeSymlink | 0o777, target: target}
}

func (a *Archive) paths() []string {
	ps := make([]string, 0, len(a.entries))
	for p := range a.entries {
		ps = append(ps, p)
	}
	sort.Strings(ps) // parents first
	return ps
}

// Hash is a digest of the archive's paths, modes and contents: the same
// hash, the same archive.
func (a *Archive) Hash() (string, error) {
	h := sha256.New()
	for _, p := range a.paths() {
		e := a.entries[p]
		fmt.Fprintf(h, "%s\x00%o\x00%s\x00", p, e.mode, e.target)
		switch {
		case e.src != "":
			f, err := os.Open(e.src)
			if err != nil {
				return "", err
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return "", err
			}
		default:
			h.Write(e.data)
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// WriteTo writes the archive in the newc format the kernel unpacks.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	ino := uint32(1)
	for _, p := range a.paths() {
		e := a.entries[p]
		var size int64
		var body io.Reader
		switch {
		case e.mode&modeSymlink == modeSymlink:
			size, body = int64(len(e.target)), strings.NewReader(e.target)
		case e.src != "":
			f, err := os.Open(e.src)
			if err != nil {
				return cw.n, err
			}
			fi, err := f.Stat()
			if err != nil {
				f.Close()
				return cw.n, err
			}
			defer f.Close()
			size, body = fi.Size(), f
		case e.mode&modeFile == modeFile:
			size, body = int64(len(e.data)), strings.NewReader(string(e.data))
		}
		if err := writeHeader(cw, p, e.mode, ino, size); err != nil {
			return cw.n, err
		}
		ino++
		if body != nil {
			if n, err := io.Copy(cw, body); err != nil || n != size {
				return cw.n, fmt.Errorf("%s: copied %d of %d bytes: %v", p, n, size, err)
			}
			if err := pad(cw); err != nil {
				return cw.n, err
			}
		}
	}
	if err := writeHeader(cw, "TRAILER!!!", 0, 0, 0); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

// writeHeader writes a newc header and the name, padded to 4 bytes.
func writeHeader(w *countWriter, name string, mode, ino uint32, size int64) error {
	nlink := uint32(1)
	if mode&modeDir == modeDir && mode&modeFile != modeFile {
		nlink = 2
	}
	_, err := fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\x00",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0, name)
	if err != nil {
		return err
	}
	return pad(w)
}

func pad(w *countWriter) error {
	if r := w.n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
