package convert

import (
	"slices"
	"testing"

	"github.com/sluice-project/sluice/test/internal/imagebuild"
	"github.com/sluice-project/sluice/test/internal/treecmp"
)

// TestFlattenHarnessDetectsDifferences guards against a vacuous pass: a
// reference with one extra layer (one mode bit, one xattr, one hard link
// fewer) must differ from the flattened image in exactly those ways.
func TestFlattenHarnessDetectsDifferences(t *testing.T) {
	e := newEnv(t)
	d := newCaseDirs(t)
	b := imagebuild.New()
	base := layers(t, b.Layer().
		File("mode", []byte("m"), file(0o644)).
		File("xattr", []byte("x"), meta{Mode: 0o644, ModTime: t1, Xattrs: map[string]string{"user.k": "v"}}).
		File("one", []byte("l"), file(0o644)).Hardlink("two", "one", file(0o644)))
	e.flattenAndMount(t, d, base...)
	changed := layers(t, b.Layer().
		File("mode", []byte("m"), file(0o645)).
		File("xattr", []byte("x"), meta{Mode: 0o644, ModTime: t1, Xattrs: map[string]string{"user.k": "w"}}).
		File("two", []byte("l"), file(0o644)))
	if err := applyReference(t.Context(), d.ref, append(base, changed...)); err != nil {
		t.Fatal(err)
	}
	diffs, err := treecmp.Compare(d.ref, d.mnt)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, df := range diffs {
		got = append(got, df.Path+" "+df.Field)
	}
	slices.Sort(got)
	want := []string{"mode mode", "one hard-link group", "one nlink", "two nlink", "xattr xattr user.k"}
	if !slices.Equal(got, want) {
		t.Errorf("differences %q, want %q:\n%s", got, want, treecmp.Format(diffs, maxReportLines))
	}
}
