package snapshot

import "fmt"

// Policy says what to do with an image that cannot be streamed.
type Policy string

const (
	// PolicyFallback pulls it the ordinary way (the default).
	PolicyFallback Policy = "fallback"
	// PolicyRequire fails its pull, naming the image and the reason.
	PolicyRequire Policy = "require"
)

// ParsePolicy parses a config value; "" means PolicyFallback.
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case "", PolicyFallback:
		return PolicyFallback, nil
	case PolicyRequire:
		return PolicyRequire, nil
	}
	return "", fmt.Errorf("policy %q: want %q or %q", s, PolicyFallback, PolicyRequire)
}
