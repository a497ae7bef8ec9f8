package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/snapshot"
)

// artifactMemo keeps, in ROOT/artifacts, what the registry said about each
// image being served (its artifact and index), so that an agent restarted
// while the registry is down still serves the image mounts it adopts, from
// the chunks in the cache. A memo lives as long as its image is exported.
type artifactMemo struct{ dir string }

// memoFile is one image's memo.
type memoFile struct {
	Image      string         `json:"image"`
	Repo       string         `json:"repo"`
	Descriptor v1.Descriptor  `json:"descriptor"`
	Subject    v1.Descriptor  `json:"subject"`
	Platform   string         `json:"platform,omitempty"`
	Data       v1.Descriptor  `json:"data"`
	Profile    *v1.Descriptor `json:"profile,omitempty"`
	Index      []byte         `json:"index"` // FORMAT.md's binary index
}

func (m artifactMemo) path(img snapshot.ImageRef) string {
	sum := sha256.Sum256([]byte(img.String()))
	return filepath.Join(m.dir, hex.EncodeToString(sum[:16])+".json")
}

// save records art as img's artifact.
func (m artifactMemo) save(img snapshot.ImageRef, art *imageconv.Artifact) error {
	ix, err := art.Index.MarshalBinary()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(memoFile{
		Image: img.String(), Repo: art.Repo.String(), Descriptor: art.Descriptor, Subject: art.Subject,
		Platform: art.Platform, Data: art.Data, Profile: art.Profile, Index: ix,
	})
	if err != nil {
		return err
	}
	tmp := m.path(img) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, m.path(img))
}

// load returns img's remembered artifact; repo options (plain HTTP) are
// those of the image's registry now.
func (m artifactMemo) load(img snapshot.ImageRef, opts ...name.Option) (*imageconv.Artifact, error) {
	b, err := os.ReadFile(m.path(img))
	if err != nil {
		return nil, err
	}
	var f memoFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("artifact memo of %s: %w", img, err)
	}
	if f.Image != img.String() {
		return nil, fmt.Errorf("artifact memo of %s names %s", img, f.Image)
	}
	repo, err := name.NewRepository(f.Repo, opts...)
	if err != nil {
		return nil, fmt.Errorf("artifact memo of %s: %w", img, err)
	}
	ix, err := imageconv.ParseIndex(f.Index)
	if err != nil {
		return nil, fmt.Errorf("artifact memo of %s: %w", img, err)
	}
	return &imageconv.Artifact{
		Repo: repo, Descriptor: f.Descriptor, Subject: f.Subject, Platform: f.Platform,
		Index: ix, Data: f.Data, Profile: f.Profile,
	}, nil
}

// remove forgets img's memo.
func (m artifactMemo) remove(img snapshot.ImageRef) error {
	if err := os.Remove(m.path(img)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
