package source

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// savedDir keeps one file per served image in dir: the artifact the
// registry gave for it, for use while the registry is down. "" keeps none.
type savedDir struct{ dir string }

// A saved file is artifact.Marshal's JSON object with one more field,
// "image": the image it was looked up for.

func (d savedDir) path(image string) string {
	sum := sha256.Sum256([]byte(image))
	return filepath.Join(d.dir, hex.EncodeToString(sum[:16])+".json")
}

// save records art as image's artifact.
func (d savedDir) save(image string, art *artifact.Artifact) error {
	if d.dir == "" {
		return nil
	}
	a, err := art.Marshal()
	if err != nil {
		return err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(a, &fields); err != nil {
		return err
	}
	if fields["image"], err = json.Marshal(image); err != nil {
		return err
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return err
	}
	tmp := d.path(image) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, d.path(image))
}

// load returns image's saved artifact; opts are the options of its
// registry's name now (plain HTTP).
func (d savedDir) load(image string, opts ...name.Option) (*artifact.Artifact, error) {
	if d.dir == "" {
		return nil, fs.ErrNotExist
	}
	b, err := os.ReadFile(d.path(image))
	if err != nil {
		return nil, err
	}
	var f struct {
		Image string `json:"image"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("saved artifact of %s: %w", image, err)
	}
	if f.Image != image {
		return nil, fmt.Errorf("saved artifact of %s names %s", image, f.Image)
	}
	art, err := artifact.Unmarshal(b, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	return art, nil
}

// remove forgets image's saved artifact.
func (d savedDir) remove(image string) error {
	if d.dir == "" {
		return nil
	}
	if err := os.Remove(d.path(image)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// prune removes files older than maxAge of images not in inUse.
func (d savedDir) prune(inUse map[string]bool, maxAge time.Duration) {
	if d.dir == "" {
		return
	}
	keep := map[string]bool{}
	for image := range inUse {
		keep[d.path(image)] = true
	}
	files, _ := filepath.Glob(filepath.Join(d.dir, "*.json"))
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && !keep[f] && time.Since(fi.ModTime()) > maxAge {
			os.Remove(f)
		}
	}
}
