// Package tomledit edits TOML documents in place, for config files that
// people also edit by hand: every byte outside an edit stays as it was
// (comments, blank lines, order, indentation, quoting, other keys).
//
// No Go TOML library both decodes and re-encodes a document without losing
// its comments, so edits are splices: go-toml's unstable parser locates
// each table header and key-value line by byte offset, the edit inserts
// or replaces text there, written in the style of its neighbours (their
// indentation and quotes), and BurntSushi/toml decodes the document
// before and after every edit, so a document that does not parse is
// refused with its position, and an edit can never produce one.
//
// Terms: a Key is a dotted path, one unquoted element per part. A table's
// section is its header line and the lines up to the next header. What
// the package does not edit (a key inside an inline table, a table inside
// an array of tables, a key that is a table in the document) is refused
// with ErrUnsupported, naming the key.
package tomledit

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
)

var (
	// ErrInvalid is a document that is not valid TOML.
	ErrInvalid = errors.New("not valid TOML")
	// ErrUnsupported is an edit this package does not make.
	ErrUnsupported = errors.New("not editable in place")
)

// Key is a dotted key or table name, one element per part, unquoted.
type Key []string

// K splits a dotted key whose parts hold no dots, e.g. K("proxy_plugins",
// "sluice", "type") or K("a.b.c").
func K(parts ...string) Key {
	var k Key
	for _, p := range parts {
		k = append(k, strings.Split(p, ".")...)
	}
	return k
}

// String renders k as TOML would: bare parts where possible, others in
// double quotes.
func (k Key) String() string {
	parts := make([]string, len(k))
	for i, p := range k {
		parts[i] = renderKeyPart(p, '"')
	}
	return strings.Join(parts, ".")
}

func (k Key) hasPrefix(p Key) bool {
	if len(p) > len(k) {
		return false
	}
	for i := range p {
		if k[i] != p[i] {
			return false
		}
	}
	return true
}

func (k Key) equal(o Key) bool { return len(k) == len(o) && k.hasPrefix(o) }

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// renderKeyPart writes one key part bare, or quoted with quote (' or ")
// where a literal string can hold it.
func renderKeyPart(p string, quote byte) string {
	if bareKey.MatchString(p) {
		return p
	}
	return renderString(p, quote)
}

// renderString writes s as a TOML string: a literal string ('...') when
// quote is ' and s allows it, else a basic string.
func renderString(s string, quote byte) string {
	if quote == '\'' && !strings.ContainsAny(s, "'\r\n") {
		return "'" + s + "'"
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			b.WriteString(`\u` + strconv.FormatInt(int64(r)+0x10000, 16)[1:])
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
