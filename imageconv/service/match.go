package service

import (
	"fmt"
	"path"
	"strings"
)

// pattern is one of WithRepos' patterns.
type pattern struct {
	glob     string // path.Match syntax, or the prefix of a "/**" pattern
	below    bool   // a "/**" pattern: glob and everything below it
	registry bool   // the pattern starts with a registry host
}

func parsePattern(s string) (pattern, error) {
	p := pattern{glob: s}
	if s == "" {
		return p, fmt.Errorf("repository pattern: empty")
	}
	if s == "**" {
		return pattern{below: true}, nil
	}
	if g, ok := strings.CutSuffix(s, "/**"); ok {
		p.glob, p.below = g, true
	}
	if _, err := path.Match(p.glob, ""); err != nil {
		return p, fmt.Errorf("repository pattern %q: %w", s, err)
	}
	first, _, _ := strings.Cut(s, "/")
	p.registry = strings.ContainsAny(first, ".:") || first == "localhost"
	return p, nil
}

// matches reports whether the repository repo of registry is one of p's.
func (p pattern) matches(registry, repo string) bool {
	name := repo
	if p.registry {
		name = registry + "/" + repo
	}
	if p.below {
		if p.glob == "" {
			return true
		}
		// The glob matches the leading components, as many as it has.
		n := strings.Count(p.glob, "/") + 1
		parts := strings.SplitN(name, "/", n+1)
		if len(parts) <= n {
			return false
		}
		ok, _ := path.Match(p.glob, strings.Join(parts[:n], "/"))
		return ok
	}
	ok, _ := path.Match(p.glob, name)
	return ok
}

// repoMatches reports whether --repos lets the service convert repo.
func (o *options) repoMatches(registry, repo string) bool {
	if len(o.repos) == 0 {
		return true
	}
	for _, p := range o.repos {
		if p.matches(registry, repo) {
			return true
		}
	}
	return false
}

// registryAllowed reports whether --registries lets the service reach
// registry.
func (o *options) registryAllowed(registry string) bool {
	return o.registries == nil || o.registries[registry]
}
