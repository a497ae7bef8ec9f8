package artifact

import (
	"encoding/json"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// saved is an Artifact as Marshal writes it.
type saved struct {
	Repo       string         `json:"repo"`
	Descriptor v1.Descriptor  `json:"descriptor"`
	Subject    v1.Descriptor  `json:"subject"`
	Platform   string         `json:"platform,omitempty"`
	Data       v1.Descriptor  `json:"data"`
	Profile    *v1.Descriptor `json:"profile,omitempty"`
	Index      []byte         `json:"index"` // the binary index blob
	Verdict    *Verdict       `json:"verdict,omitempty"`
}

// Marshal encodes what a Lookup found, index and verdict included, so
// that a process can serve the image later without asking the registry
// again (when it is down, say): Unmarshal gives it back. A record without
// a verdict (saved before verdicts were) has the zero Verdict, which no
// Verifier accepts.
func (a *Artifact) Marshal() ([]byte, error) {
	ix, err := a.Index.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return json.Marshal(saved{
		Repo: a.Repo.String(), Descriptor: a.Descriptor, Subject: a.Subject,
		Platform: a.Platform, Data: a.Data, Profile: a.Profile, Index: ix, Verdict: &a.Verdict,
	})
}

// Unmarshal decodes what Marshal wrote, checking the index as Lookup does.
// opts are the repository's name options now (name.Insecure for a registry
// reached over plain HTTP).
func Unmarshal(b []byte, opts ...name.Option) (*Artifact, error) {
	var s saved
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("saved artifact: %w", err)
	}
	repo, err := name.NewRepository(s.Repo, opts...)
	if err != nil {
		return nil, fmt.Errorf("saved artifact: %w", err)
	}
	ix, err := ParseIndex(s.Index)
	if err != nil {
		return nil, fmt.Errorf("saved artifact %s: %w", s.Descriptor.Digest, err)
	}
	a := &Artifact{
		Repo: repo, Descriptor: s.Descriptor, Subject: s.Subject, Platform: s.Platform,
		Index: ix, Data: s.Data, Profile: s.Profile,
	}
	if s.Verdict != nil {
		a.Verdict = *s.Verdict
	}
	return a, nil
}
