package registryhosts

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// hostFile is hosts.toml: the keys containerd reads, for a strict decode.
type hostFile struct {
	hostEntry
	Server string               `toml:"server"`
	Host   map[string]hostEntry `toml:"host"`
}

type hostEntry struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   *bool          `toml:"skip_verify"`
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
	DialTimeout  string         `toml:"dial_timeout"`
}

// Check checks every hosts.toml under config_path (each registry's),
// so that a daemon can refuse a malformed one at start.
func (c *Config) Check() error {
	for _, root := range c.roots {
		files, err := filepath.Glob(filepath.Join(root, "*", "hosts.toml"))
		if err != nil {
			return err
		}
		for _, f := range files {
			if err := CheckFile(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// CheckFile checks that the hosts.toml at path (if it exists) holds only
// keys containerd knows, with values it accepts. Its error wraps
// ErrBadConfig and names the file and the key.
func CheckFile(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	var f hostFile
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("%w: %s: %s", ErrBadConfig, path, pe.ErrorWithPosition())
		}
		return fmt.Errorf("%w: %s: %w", ErrBadConfig, path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return fmt.Errorf("%w: %s: unknown key %s", ErrBadConfig, path, strings.Join(keys, ", "))
	}
	if f.Server != "" {
		if err := checkURL(f.Server); err != nil {
			return fmt.Errorf("%w: %s: server: %w", ErrBadConfig, path, err)
		}
	}
	if err := f.hostEntry.check(""); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadConfig, path, err)
	}
	for h, e := range f.Host {
		key := "host." + strconv.Quote(h)
		if err := checkURL(h); err != nil {
			return fmt.Errorf("%w: %s: %s: %w", ErrBadConfig, path, key, err)
		}
		if err := e.check(key + "."); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrBadConfig, path, err)
		}
	}
	return nil
}

// checkURL checks a host's address as containerd reads it: a URL, https
// unless it says http.
func checkURL(s string) error {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("want http[s]://HOST[:PORT][/PATH], got %q", s)
	}
	return nil
}

// check checks the values of a host's keys; prefix names the host's table.
func (e hostEntry) check(prefix string) error {
	for _, c := range e.Capabilities {
		switch strings.ToLower(c) {
		case "pull", "resolve", "push", "referrers":
		default:
			return fmt.Errorf("%scapabilities: unknown capability %q (want pull, resolve, push or referrers)", prefix, c)
		}
	}
	if e.CA != nil && !stringOrList(e.CA) {
		return fmt.Errorf("%sca: want a file or a list of files, got %v", prefix, e.CA)
	}
	if e.Client != nil && !clientValue(e.Client) {
		return fmt.Errorf("%sclient: want a file, a list of files or of [cert, key] pairs, got %v", prefix, e.Client)
	}
	for k, v := range e.Header {
		if !stringOrList(v) {
			return fmt.Errorf("%sheader.%s: want a string or a list of strings, got %v", prefix, k, v)
		}
	}
	if e.DialTimeout != "" {
		if _, err := time.ParseDuration(e.DialTimeout); err != nil {
			return fmt.Errorf("%sdial_timeout: want a duration such as \"3s\", got %q", prefix, e.DialTimeout)
		}
	}
	return nil
}

func stringOrList(v any) bool {
	switch v := v.(type) {
	case string:
		return true
	case []any:
		for _, s := range v {
			if _, ok := s.(string); !ok {
				return false
			}
		}
		return true
	}
	return false
}

func clientValue(v any) bool {
	if _, ok := v.(string); ok {
		return true
	}
	list, ok := v.([]any)
	if !ok {
		return false
	}
	for _, p := range list {
		if pair, ok := p.([]any); ok {
			if len(pair) != 2 || !stringOrList(pair) {
				return false
			}
		} else if _, ok := p.(string); !ok {
			return false
		}
	}
	return true
}
