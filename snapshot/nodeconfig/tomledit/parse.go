package tomledit

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/BurntSushi/toml"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Doc is a TOML document being edited. Its methods edit the bytes; Bytes
// returns them.
type Doc struct {
	src  []byte
	data map[string]any // src decoded

	headers []header
	kvs     []keyValue
	nl      string // line ending: "\n" or "\r\n"
}

// header is a [table] or [[array table]] line.
type header struct {
	path  Key
	raw   []string // each part as written, quotes included
	array bool
	// start and end are the offsets of its line: first byte, and one past
	// its line ending.
	start, end int
	indent     string
}

// keyValue is a key = value expression, possibly over several lines.
type keyValue struct {
	section int // index in headers of its table; -1 for the root table
	path    Key // its full path: the section's table, then its own key
	raw     []string
	// start, end: its lines (first byte of the first, one past the line
	// ending of the last); valStart, valEnd: the value's bytes.
	start, end       int
	valStart, valEnd int
	kind             unstable.Kind
	indent           string
}

// Parse reads a TOML document. A document that does not decode is
// refused: the error wraps ErrInvalid and gives the line and column.
func Parse(src []byte) (*Doc, error) {
	d := &Doc{src: src, nl: "\n"}
	if _, err := toml.Decode(string(src), &d.data); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%w: %s", ErrInvalid, pe.ErrorWithPosition())
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if i := bytes.IndexByte(src, '\n'); i > 0 && src[i-1] == '\r' {
		d.nl = "\r\n"
	}
	var p unstable.Parser
	p.Reset(src)
	section := -1
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			path, raw, first, last := keyOf(&p, e.Key())
			start := lineStart(src, first)
			d.headers = append(d.headers, header{
				path:   path,
				raw:    raw,
				array:  e.Kind == unstable.ArrayTable,
				start:  start,
				end:    lineEnd(src, last),
				indent: indentOf(src, start),
			})
			section = len(d.headers) - 1
		case unstable.KeyValue:
			path, raw, first, last := keyOf(&p, e.Key())
			kvEnd := int(e.Raw.Offset + e.Raw.Length)
			valStart, err := valueStart(src, last)
			if err != nil {
				return nil, err
			}
			start := lineStart(src, first)
			kv := keyValue{
				section:  section,
				path:     path,
				raw:      raw,
				start:    start,
				end:      lineEnd(src, kvEnd),
				valStart: valStart,
				valEnd:   kvEnd,
				kind:     e.Value().Kind,
				indent:   indentOf(src, start),
			}
			if section >= 0 {
				kv.path = append(append(Key{}, d.headers[section].path...), path...)
			}
			d.kvs = append(d.kvs, kv)
		}
	}
	if err := p.Error(); err != nil {
		// BurntSushi/toml took it: the parsers disagree on some corner
		// of the grammar, so nothing is located with certainty.
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	return d, nil
}

// keyOf returns a key's parts, their raw spellings, the offset of its
// first byte and the offset one past its last.
func keyOf(p *unstable.Parser, it unstable.Iterator) (path Key, raw []string, first, last int) {
	first = -1
	for it.Next() {
		n := it.Node()
		path = append(path, string(n.Data))
		raw = append(raw, string(p.Raw(n.Raw)))
		if first < 0 {
			first = int(n.Raw.Offset)
		}
		last = int(n.Raw.Offset + n.Raw.Length)
	}
	return path, raw, first, last
}

// valueStart finds the value after a key ending at off: past the "=" and
// the blanks around it.
func valueStart(src []byte, off int) (int, error) {
	i := skipBlanks(src, off)
	if i >= len(src) || src[i] != '=' {
		return 0, fmt.Errorf("%w: no '=' after the key at offset %d", ErrUnsupported, off)
	}
	return skipBlanks(src, i+1), nil
}

func skipBlanks(src []byte, i int) int {
	for i < len(src) && (src[i] == ' ' || src[i] == '\t') {
		i++
	}
	return i
}

// lineStart is the offset of the first byte of the line holding off.
func lineStart(src []byte, off int) int {
	return bytes.LastIndexByte(src[:off], '\n') + 1
}

// lineEnd is the offset one past the line ending of the line holding
// off (len(src) on a last line without one).
func lineEnd(src []byte, off int) int {
	if i := bytes.IndexByte(src[off:], '\n'); i >= 0 {
		return off + i + 1
	}
	return len(src)
}

// indentOf returns the blanks that start the line at start.
func indentOf(src []byte, start int) string {
	return string(src[start:skipBlanks(src, start)])
}
