package imageconv

import (
	"archive/tar"
	"fmt"
	"sort"
	"strings"
	"testing"
)

// applyLayers merges header-only layers into a new tree.
func applyLayers(t *testing.T, layers ...[]tar.Header) (*tree, error) {
	t.Helper()
	tr := newTree()
	for _, l := range layers {
		for i := range l {
			if err := tr.apply(&l[i]); err != nil {
				return tr, err
			}
		}
		tr.endLayer()
	}
	return tr, nil
}

// listing renders the final tree as "path type[->link] [=inode source]".
func listing(tr *tree) string {
	var out []string
	var walk func(prefix string, n *node)
	walk = func(prefix string, n *node) {
		for name, c := range n.children {
			p := prefix + name
			if c.isDir() {
				out = append(out, p+"/")
				walk(p+"/", c)
				continue
			}
			s := fmt.Sprintf("%s %c", p, c.ino.typeflag)
			if c.ino.linkname != "" {
				s += "->" + c.ino.linkname
			}
			s += fmt.Sprintf(" @%d.%d", c.ino.source.layer, c.ino.source.ord)
			out = append(out, s)
		}
	}
	walk("", tr.root)
	sort.Strings(out)
	return strings.Join(out, "\n")
}

func h(name string, typ byte, link ...string) tar.Header {
	hd := tar.Header{Name: name, Typeflag: typ}
	if len(link) > 0 {
		hd.Linkname = link[0]
	}
	return hd
}

func TestTreeMerge(t *testing.T) {
	cases := []struct {
		name   string
		layers [][]tar.Header
		want   string
	}{
		{
			name: "whiteout removes a lower file and subtree",
			layers: [][]tar.Header{
				{h("a/", tar.TypeDir), h("a/f", tar.TypeReg), h("d/", tar.TypeDir), h("d/x", tar.TypeReg)},
				{h("a/.wh.f", tar.TypeReg), h(".wh.d", tar.TypeReg)},
			},
			want: "a/",
		},
		{
			name: "opaque keeps only this layer's entries, recursively",
			layers: [][]tar.Header{
				{h("o/", tar.TypeDir), h("o/old", tar.TypeReg), h("o/sub/", tar.TypeDir), h("o/sub/old", tar.TypeReg)},
				{h("o/new", tar.TypeReg), h("o/.wh..wh..opq", tar.TypeReg), h("o/sub/", tar.TypeDir)},
			},
			want: "o/\no/new 0 @1.0\no/sub/",
		},
		{
			name: "file replaced by a directory and the reverse",
			layers: [][]tar.Header{
				{h("x", tar.TypeReg), h("y/", tar.TypeDir), h("y/child", tar.TypeReg)},
				{h("x/", tar.TypeDir), h("x/in", tar.TypeReg), h("y", tar.TypeReg)},
			},
			want: "x/\nx/in 0 @1.1\ny 0 @1.2",
		},
		{
			name: "hard link survives its deleted target",
			layers: [][]tar.Header{
				{h("a", tar.TypeReg)},
				{h("b", tar.TypeLink, "a")},
				{h(".wh.a", tar.TypeReg)},
			},
			want: "b 0 @0.0",
		},
		{
			name: "entry written through an in-root symlink",
			layers: [][]tar.Header{
				{h("usr/", tar.TypeDir), h("usr/lib/", tar.TypeDir), h("lib", tar.TypeSymlink, "usr/lib")},
				{h("lib/x", tar.TypeReg)},
			},
			want: "lib 2->usr/lib @0.2\nusr/\nusr/lib/\nusr/lib/x 0 @1.0",
		},
		{
			name: "absolute symlink resolves inside the root",
			layers: [][]tar.Header{
				{h("etc/", tar.TypeDir), h("conf", tar.TypeSymlink, "/etc")},
				{h("conf/f", tar.TypeReg)},
			},
			want: "conf 2->/etc @0.1\netc/\netc/f 0 @1.0",
		},
		{
			name:   "root entries are ignored",
			layers: [][]tar.Header{{h("./", tar.TypeDir), h(".", tar.TypeDir), h("./a", tar.TypeReg)}},
			want:   "a 0 @0.2",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, err := applyLayers(t, c.layers...)
			if err != nil {
				t.Fatal(err)
			}
			if got := listing(tr); got != c.want {
				t.Errorf("got\n%s\nwant\n%s", got, c.want)
			}
		})
	}
}

func TestTreeRefuses(t *testing.T) {
	cases := map[string][][]tar.Header{
		"looping symlink as a parent": {{h("a", tar.TypeSymlink, "b"), h("b", tar.TypeSymlink, "a"), h("a/x", tar.TypeReg)}},
		"file as a parent":            {{h("f", tar.TypeReg), h("f/x", tar.TypeReg)}},
		"hard link to a directory":    {{h("d/", tar.TypeDir), h("l", tar.TypeLink, "d")}},
		"hard link escaping":          {{h("l", tar.TypeLink, "../etc/passwd")}},
		"name too long":               {{h(strings.Repeat("n", 256), tar.TypeReg)}},
		"unsupported type":            {{h("c", 'Z')}},
		"absurd size":                 {{{Name: "big", Typeflag: tar.TypeReg, Size: 1 << 50}}},
	}
	for name, layers := range cases {
		if _, err := applyLayers(t, layers...); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPlanHardLinks(t *testing.T) {
	tr, err := applyLayers(t,
		[]tar.Header{h("a", tar.TypeReg), h("b", tar.TypeLink, "a")},
		[]tar.Header{h("c", tar.TypeLink, "a"), h(".wh.a", tar.TypeReg)},
	)
	if err != nil {
		t.Fatal(err)
	}
	acts, _, _ := tr.plan()
	a := acts[0][0]
	if a == nil || a.path != "b" || strings.Join(a.links, ",") != "c" {
		t.Fatalf("inode of a: %+v, want path b with link c", a)
	}
	if acts[0][1] != nil || acts[1][0] != nil {
		t.Error("link entries got actions of their own")
	}
	if a.ino.override == nil {
		t.Error("metadata of the later link entry was dropped")
	}
}
