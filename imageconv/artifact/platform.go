package artifact

import (
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ParsePlatforms parses a comma-separated list such as "linux/amd64,linux/arm64/v8".
func ParsePlatforms(s string) ([]v1.Platform, error) {
	var ps []v1.Platform
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := v1.ParsePlatform(f)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", f, err)
		}
		if p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("platform %q: want os/arch[/variant]", f)
		}
		ps = append(ps, *p)
	}
	return ps, nil
}

// PlatformManifests returns the image manifests of an index that are for
// one of the platforms want (any platform if want is empty), in index
// order: the manifests a converter makes artifacts for, and so the one
// Lookup looks for. Nested indexes and attestations (platform
// unknown/unknown) are never converted, so they are left out.
func PlatformManifests(im *v1.IndexManifest, want []v1.Platform) []v1.Descriptor {
	var ms []v1.Descriptor
	for _, m := range im.Manifests {
		if !m.MediaType.IsImage() || m.Platform == nil || m.Platform.OS == "unknown" {
			continue
		}
		if len(want) > 0 && !MatchesAny(*m.Platform, want) {
			continue
		}
		ms = append(ms, m)
	}
	return ms
}

// MatchesAny reports whether p satisfies one of want.
func MatchesAny(p v1.Platform, want []v1.Platform) bool {
	for _, w := range want {
		if p.Satisfies(w) {
			return true
		}
	}
	return false
}
