// Package treecmp compares two directory trees and reports every difference
// a container would see: names (raw bytes), types, permission bits, owners,
// sizes, contents, symlink targets, hard-link groups, xattrs, device numbers
// and mtimes to the nanosecond. The roots' own metadata is not compared.
//
// Trees are walked with fd-relative system calls only, so paths of any length
// (up to the kernel's 4096-byte limit below either root, and beyond PATH_MAX
// once joined to a root) are handled.
package treecmp

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Difference is one field of one path that differs between the trees.
type Difference struct {
	Path  string // relative to the roots, raw bytes
	Field string // "presence", "type", "mode", "content", "xattr user.x", ...
	Want  string // value in the reference tree
	Got   string // value in the tree under test
}

func (d Difference) String() string {
	return fmt.Sprintf("%s: %s: want %s, got %s", displayPath(d.Path), d.Field, d.Want, d.Got)
}

// Compare walks the reference tree want and the tree under test got and
// returns their differences sorted by path.
func Compare(want, got string) ([]Difference, error) {
	a, err := Scan(want)
	if err != nil {
		return nil, err
	}
	b, err := Scan(got)
	if err != nil {
		return nil, err
	}
	return Diff(a, b), nil
}

// Diff compares two scanned trees.
func Diff(want, got Tree) []Difference {
	var diffs []Difference
	add := func(p, field, w, g string) {
		diffs = append(diffs, Difference{Path: p, Field: field, Want: w, Got: g})
	}
	paths := slices.Sorted(maps.Keys(want.Entries))
	for p := range got.Entries {
		if _, ok := want.Entries[p]; !ok {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	seenGroup := map[string]bool{}
	for _, p := range paths {
		w, wok := want.Entries[p]
		g, gok := got.Entries[p]
		switch {
		case !gok:
			add(p, "presence", w.typeName(), "missing")
			continue
		case !wok:
			add(p, "presence", "missing", g.typeName())
			continue
		case w.Mode&unix.S_IFMT != g.Mode&unix.S_IFMT:
			add(p, "type", w.typeName(), g.typeName())
			continue
		}
		cmpEntry(p, w, g, add)
		wg, gg := want.linkGroup(p, w), got.linkGroup(p, g)
		// One line per differing group, not one per member.
		if wg != gg && !seenGroup[wg] && !seenGroup[gg] {
			seenGroup[wg], seenGroup[gg] = true, true
			add(p, "hard-link group", formatGroup(wg), formatGroup(gg))
		}
	}
	return diffs
}

func cmpEntry(p string, w, g *Entry, add func(p, field, w, g string)) {
	if w.Mode&07777 != g.Mode&07777 {
		add(p, "mode", fmt.Sprintf("%04o", w.Mode&07777), fmt.Sprintf("%04o", g.Mode&07777))
	}
	if w.UID != g.UID {
		add(p, "uid", strconv.FormatUint(uint64(w.UID), 10), strconv.FormatUint(uint64(g.UID), 10))
	}
	if w.GID != g.GID {
		add(p, "gid", strconv.FormatUint(uint64(w.GID), 10), strconv.FormatUint(uint64(g.GID), 10))
	}
	if w.Nlink != g.Nlink {
		add(p, "nlink", strconv.FormatUint(w.Nlink, 10), strconv.FormatUint(g.Nlink, 10))
	}
	if w.Mtime != g.Mtime {
		add(p, "mtime", formatTime(w.Mtime), formatTime(g.Mtime))
	}
	switch w.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if w.Size != g.Size {
			add(p, "size", strconv.FormatInt(w.Size, 10), strconv.FormatInt(g.Size, 10))
		} else if w.Digest != g.Digest {
			add(p, "content", w.Digest, g.Digest)
		}
	case unix.S_IFLNK:
		if w.Target != g.Target {
			add(p, "symlink target", strconv.Quote(w.Target), strconv.Quote(g.Target))
		}
	case unix.S_IFCHR, unix.S_IFBLK:
		if w.Rdev != g.Rdev {
			add(p, "device", formatDev(w.Rdev), formatDev(g.Rdev))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(w.Xattrs)) {
		gv, ok := g.Xattrs[k]
		switch {
		case !ok:
			add(p, "xattr "+k, strconv.Quote(w.Xattrs[k]), "missing")
		case gv != w.Xattrs[k]:
			add(p, "xattr "+k, strconv.Quote(w.Xattrs[k]), strconv.Quote(gv))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(g.Xattrs)) {
		if _, ok := w.Xattrs[k]; !ok {
			add(p, "xattr "+k, "missing", strconv.Quote(g.Xattrs[k]))
		}
	}
}

// Format renders at most maxLines differences, one a line, and says how
// many were left out.
func Format(diffs []Difference, maxLines int) string {
	var b strings.Builder
	for i, d := range diffs {
		if i == maxLines {
			fmt.Fprintf(&b, "... and %d more differences\n", len(diffs)-maxLines)
			break
		}
		b.WriteString(d.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// displayPath quotes names that are not printable UTF-8 and shortens very
// long paths to their head and tail.
func displayPath(p string) string {
	q := strconv.Quote("/" + p)
	if len(q) > 200 {
		q = fmt.Sprintf("%s...(%d bytes)...%s", q[:90], len(p), q[len(q)-90:])
	}
	return q
}

func formatTime(ts unix.Timespec) string {
	return fmt.Sprintf("%d.%09d", ts.Sec, ts.Nsec)
}

func formatDev(rdev uint64) string {
	return fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev))
}

func formatGroup(g string) string {
	parts := strings.Split(g, "\x00")
	for i, p := range parts {
		parts[i] = displayPath(p)
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
