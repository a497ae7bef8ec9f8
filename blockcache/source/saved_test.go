package source

import (
	"os"
	"testing"
	"time"
)

// TestPruneSaved: saved artifacts of images not open, older than the age
// given, go; fresh ones and those of open images stay.
func TestPruneSaved(t *testing.T) {
	d := savedDir{dir: t.TempDir()}
	const served, oldUnused, fresh = "r/served:1@sha256:aa", "r/gone:1@sha256:bb", "r/new:1@sha256:cc"
	old := time.Now().Add(-48 * time.Hour)
	for _, image := range []string{served, oldUnused, fresh} {
		if err := os.WriteFile(d.path(image), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		if image != fresh {
			if err := os.Chtimes(d.path(image), old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	d.prune(map[string]bool{served: true}, 24*time.Hour)
	for image, want := range map[string]bool{served: true, oldUnused: false, fresh: true} {
		if _, err := os.Stat(d.path(image)); (err == nil) != want {
			t.Errorf("%s: kept %v, want %v", image, err == nil, want)
		}
	}
}
