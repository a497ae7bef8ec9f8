package nodeconfig

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	udiff "github.com/aymanbagabas/go-udiff"

	"github.com/sluice-project/sluice/snapshot/nodeconfig/tomledit"
)

// TrustSigned edits sluiced's config src so that only artifacts signed by
// one of its trust keys are used: [trust] policy = "signed", and keys
// lists each of keys (after those it already lists).
func TrustSigned(src []byte, keys []string) ([]byte, []string, error) {
	d, err := tomledit.Parse(src)
	if err != nil {
		return nil, nil, err
	}
	var have []string
	if cur, ok := d.Get(tomledit.Key{"trust", "keys"}); ok {
		list, isList := cur.([]any)
		if !isList {
			return nil, nil, fmt.Errorf("trust.keys: want a list of key files, got %v", cur)
		}
		for _, k := range list {
			s, isString := k.(string)
			if !isString {
				return nil, nil, fmt.Errorf("trust.keys: want a list of key files, got %v", cur)
			}
			have = append(have, s)
		}
	}
	all := slices.Clone(have)
	for _, k := range keys {
		if !filepath.IsAbs(k) {
			return nil, nil, fmt.Errorf("trust key %q: want an absolute path", k)
		}
		if !slices.Contains(all, k) {
			all = append(all, k)
		}
	}
	var changes []string
	for _, kv := range []tomledit.KeyValue{{Key: "policy", Value: "signed"}, {Key: "keys", Value: all}} {
		changed, err := d.Set(tomledit.Key{"trust", kv.Key}, kv.Value)
		if err != nil {
			return nil, nil, err
		}
		if changed {
			changes = append(changes, fmt.Sprintf("trust.%s = %#v", kv.Key, kv.Value))
		}
	}
	return d.Bytes(), changes, nil
}

// InstallTrust applies TrustSigned to the sluiced config at path. check,
// if set, must accept the new content (sluiced's own config checks, which
// read the key files) or nothing is written. On a dry run nothing is
// written, and nothing checked: the keys may not be in place yet.
func InstallTrust(path string, keys []string, check func([]byte) error, dryRun bool) (Change, error) {
	return editSluiced(path, "with the trust keys", func(src []byte) ([]byte, []string, error) { return TrustSigned(src, keys) }, check, dryRun)
}

// editSluiced applies edit to the sluiced config at path, as InstallTrust
// says; what names the edit in check's error.
func editSluiced(path, what string, edit func([]byte) ([]byte, []string, error), check func([]byte) error, dryRun bool) (Change, error) {
	c := Change{Path: path}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return c, fmt.Errorf("sluiced config: %w", err)
	}
	src, err := os.ReadFile(real)
	if err != nil {
		return c, fmt.Errorf("sluiced config: %w", err)
	}
	out, changes, err := edit(src)
	if err != nil {
		return c, fmt.Errorf("sluiced config %s: %w", path, err)
	}
	if bytes.Equal(out, src) {
		return c, nil
	}
	if check != nil && !dryRun {
		if err := check(out); err != nil {
			return c, fmt.Errorf("sluiced config %s %s: %w", path, what, err)
		}
	}
	c.Summary = changes
	c.Diff = udiff.Unified(path, path, string(src), string(out))
	if dryRun {
		return c, nil
	}
	if err := writeLike(real, out, real); err != nil {
		return c, fmt.Errorf("sluiced config %s: %w", path, err)
	}
	return c, nil
}
