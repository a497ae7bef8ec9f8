package tomledit

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// Bytes returns the document as edited so far.
func (d *Doc) Bytes() []byte { return d.src }

// Get returns the decoded value at path: string, bool, int64, float64,
// []any, map[string]any (a table) or []map[string]any (an array of
// tables).
func (d *Doc) Get(path Key) (any, bool) {
	var cur any = d.data
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// KeyValue is one key = value line of a new table.
type KeyValue struct {
	Key   string
	Value any
}

// Set makes path hold v (a string, bool, int or []string), and reports
// whether the document changed. An existing value is replaced where it
// stands; a new key goes after the last key of its table, or of the
// dotted keys that define its table; a new table goes after the last
// table that shares the longest leading part of its name, or at the end.
func (d *Doc) Set(path Key, v any) (bool, error) {
	if len(path) == 0 {
		return false, fmt.Errorf("%w: empty key", ErrUnsupported)
	}
	if cur, ok := d.Get(path); ok && same(cur, v) {
		return false, nil
	}
	if err := d.checkEditable(path); err != nil {
		return false, err
	}
	if i := d.findKV(path); i >= 0 {
		kv := d.kvs[i]
		if kv.kind == unstable.InlineTable {
			return false, fmt.Errorf("%w: %s is an inline table", ErrUnsupported, path)
		}
		quote := byte('"')
		if d.src[kv.valStart] == '\'' {
			quote = '\''
		}
		val, err := renderValue(v, quote)
		if err != nil {
			return false, fmt.Errorf("%s: %w", path, err)
		}
		return true, d.splice(kv.valStart, kv.valEnd, val, path)
	}
	if cur, ok := d.Get(path); ok {
		return false, fmt.Errorf("%w: %s is a table (%T) in the document, not a value", ErrUnsupported, path, cur)
	}
	table, key := path[:len(path)-1], path[len(path)-1]
	val, err := renderValue(v, d.stringQuote())
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	// In the root table, after its last key (or at the top).
	if len(table) == 0 {
		at, indent := 0, ""
		for _, kv := range d.kvs {
			if kv.section < 0 {
				at, indent = kv.end, kv.indent
			}
		}
		return true, d.insertLines(at, []string{indent + d.keyText(nil, Key{key}) + " = " + val}, false, path)
	}
	// Under its own [table] header.
	if h := d.findHeader(table); h >= 0 {
		at, indent := d.headers[h].end, d.headers[h].indent+d.keyStep()
		for _, kv := range d.kvs {
			if kv.section == h {
				at = kv.end
				if len(kv.path) == len(path) {
					indent = kv.indent
				}
			}
		}
		return true, d.insertLines(at, []string{indent + d.keyText(nil, Key{key}) + " = " + val}, false, path)
	}
	// Among the dotted keys that define its table (a.b.c = 1 in [x]).
	last, base := -1, 0
	for i, kv := range d.kvs {
		b := 0
		if kv.section >= 0 {
			b = len(d.headers[kv.section].path)
		}
		if b < len(table) && len(kv.path) > len(table) && kv.path.hasPrefix(table) {
			last, base = i, b
		}
	}
	if last >= 0 {
		kv := d.kvs[last]
		// The key relative to the section, spelled as that line spells it.
		rel := append(append([]string{}, kv.raw[:len(table)-base]...), renderKeyPart(key, d.keyQuote()))
		return true, d.insertLines(kv.end, []string{kv.indent + strings.Join(rel, ".") + " = " + val}, false, path)
	}
	// A new table.
	at, indent := d.newTableAt(table)
	lines := []string{indent + "[" + d.keyText(table, nil) + "]", indent + d.keyStep() + d.keyText(nil, Key{key}) + " = " + val}
	return true, d.insertLines(at, lines, true, path)
}

// AppendArrayTable adds an element to the array of tables path, holding
// kvs in order: after the last element (and its sub-tables), or where
// Set would put a new table.
func (d *Doc) AppendArrayTable(path Key, kvs []KeyValue) error {
	if cur, ok := d.Get(path); ok {
		if _, isArray := cur.([]map[string]any); !isArray {
			return fmt.Errorf("%w: %s is %s in the document, not an array of [[tables]]", ErrUnsupported, path, kindOf(cur))
		}
	}
	if err := d.checkEditable(path); err != nil {
		return err
	}
	at, indent := -1, ""
	for i, h := range d.headers {
		if h.array && h.path.equal(path) {
			at, indent = d.sectionEnd(i), h.indent
			// its sub-tables, up to the next header outside it
			for j := i + 1; j < len(d.headers) && d.headers[j].path.hasPrefix(path) && !d.headers[j].path.equal(path); j++ {
				at = d.sectionEnd(j)
			}
		}
	}
	if at < 0 {
		at, indent = d.newTableAt(path)
	}
	lines := []string{indent + "[[" + d.keyText(path, nil) + "]]"}
	for _, kv := range kvs {
		val, err := renderValue(kv.Value, d.stringQuote())
		if err != nil {
			return fmt.Errorf("%s.%s: %w", path, kv.Key, err)
		}
		lines = append(lines, indent+d.keyStep()+d.keyText(nil, Key{kv.Key})+" = "+val)
	}
	return d.insertLines(at, lines, true, path)
}

// checkEditable refuses a path through something other than plain
// tables: a value, an inline table, an array of tables.
func (d *Doc) checkEditable(path Key) error {
	for i := 1; i < len(path); i++ {
		prefix := path[:i]
		cur, ok := d.Get(prefix)
		if !ok {
			return nil
		}
		if _, isTable := cur.(map[string]any); !isTable {
			return fmt.Errorf("%w: %s is %s, so %s cannot be set in it", ErrUnsupported, prefix, kindOf(cur), path)
		}
		if j := d.findKV(prefix); j >= 0 {
			return fmt.Errorf("%w: %s is an inline table: edit %s by hand", ErrUnsupported, prefix, path)
		}
	}
	return nil
}

func kindOf(v any) string {
	switch v.(type) {
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	default:
		return "a value"
	}
}

// findKV returns the index of the key-value line whose full path is path,
// or -1.
func (d *Doc) findKV(path Key) int {
	for i, kv := range d.kvs {
		if kv.path.equal(path) && (kv.section < 0 || !d.headers[kv.section].array) {
			return i
		}
	}
	return -1
}

// findHeader returns the index of the [path] header, or -1.
func (d *Doc) findHeader(path Key) int {
	for i, h := range d.headers {
		if !h.array && h.path.equal(path) {
			return i
		}
	}
	return -1
}

// sectionEnd is one past the last line of header i's own key-values (its
// header line if it has none): where a line appended to it goes, before
// the blank lines and comments that lead to the next header.
func (d *Doc) sectionEnd(i int) int {
	end := d.headers[i].end
	for _, kv := range d.kvs {
		if kv.section == i {
			end = kv.end
		}
	}
	return end
}

// newTableAt returns where a new table path goes, and its header's
// indentation: after the last table sharing the longest leading part of
// its name (so [proxy_plugins.x] joins [proxy_plugins], and [a] follows
// its sub-tables [a.b]), else at the end.
func (d *Doc) newTableAt(path Key) (int, string) {
	for n := len(path); n >= 1; n-- {
		last := -1
		for i, h := range d.headers {
			if h.path.hasPrefix(path[:n]) {
				last = i
			}
		}
		if last < 0 {
			continue
		}
		return d.sectionEnd(last), d.headerIndent(path, path[:n])
	}
	return len(d.src), ""
}

// headerIndent is the indentation for a new header path whose nearest
// existing relative is prefix: that of a header as deep under prefix,
// else one step more than prefix's own, else none.
func (d *Doc) headerIndent(path, prefix Key) string {
	for _, h := range d.headers {
		if len(h.path) == len(path) && h.path.hasPrefix(prefix) {
			return h.indent
		}
	}
	for _, h := range d.headers {
		if h.path.equal(prefix) {
			if d.nestedIndent() {
				return h.indent + "  "
			}
			return h.indent
		}
	}
	return ""
}

// nestedIndent reports whether the document indents sub-table headers,
// as containerd's generated configs do.
func (d *Doc) nestedIndent() bool {
	for _, h := range d.headers {
		if h.indent != "" {
			return true
		}
	}
	return false
}

// keyStep is what key lines are indented by, beyond their header: two
// spaces if the document indents keys under headers, else nothing.
func (d *Doc) keyStep() string {
	for _, kv := range d.kvs {
		if kv.section >= 0 && len(kv.indent) > len(d.headers[kv.section].indent) {
			return "  "
		}
	}
	return ""
}

// keyText renders table (a full table name, spelled as the document
// already spells its longest leading part) followed by key (bare or
// quoted).
func (d *Doc) keyText(table, key Key) string {
	var parts []string
	if len(table) > 0 {
		n := 0
		for _, h := range d.headers {
			m := 0
			for m < len(h.path) && m < len(table) && h.path[m] == table[m] {
				m++
			}
			if m > n {
				n, parts = m, append([]string{}, h.raw[:m]...)
			}
		}
		for _, p := range table[n:] {
			parts = append(parts, renderKeyPart(p, d.keyQuote()))
		}
	}
	for _, p := range key {
		parts = append(parts, renderKeyPart(p, d.keyQuote()))
	}
	return strings.Join(parts, ".")
}

// keyQuote is the quote the document uses most for quoted key parts.
func (d *Doc) keyQuote() byte {
	single, double := 0, 0
	count := func(raw []string) {
		for _, r := range raw {
			switch r[0] {
			case '\'':
				single++
			case '"':
				double++
			}
		}
	}
	for _, h := range d.headers {
		count(h.raw)
	}
	for _, kv := range d.kvs {
		count(kv.raw)
	}
	if single > double {
		return '\''
	}
	return '"'
}

// stringQuote is the quote the document uses most for string values.
func (d *Doc) stringQuote() byte {
	single, double := 0, 0
	for _, kv := range d.kvs {
		if kv.kind != unstable.String {
			continue
		}
		if d.src[kv.valStart] == '\'' {
			single++
		} else {
			double++
		}
	}
	if single > double {
		return '\''
	}
	return '"'
}

// insertLines inserts lines at offset at (a line start). A new table is
// set apart by a blank line from what comes before it.
func (d *Doc) insertLines(at int, lines []string, table bool, path Key) error {
	var b strings.Builder
	if at > 0 && d.src[at-1] != '\n' {
		b.WriteString(d.nl) // a last line without a line ending
	}
	if table && at > 0 && !d.blankBefore(at) {
		b.WriteString(d.nl)
	}
	for _, l := range lines {
		b.WriteString(l + d.nl)
	}
	return d.splice(at, at, b.String(), path)
}

// blankBefore reports whether the line before offset at (a line start) is
// blank.
func (d *Doc) blankBefore(at int) bool {
	prev := d.src[lineStart(d.src, max(at-1, 0)):at]
	return len(strings.TrimSpace(string(prev))) == 0
}

// splice replaces src[from:to] with text and parses the result again; an
// edit that would leave a document that does not decode is not made.
func (d *Doc) splice(from, to int, text string, path Key) error {
	out := make([]byte, 0, len(d.src)-(to-from)+len(text))
	out = append(append(append(out, d.src[:from]...), text...), d.src[to:]...)
	nd, err := Parse(out)
	if err != nil {
		return fmt.Errorf("setting %s would break the document: %w", path, err)
	}
	*d = *nd
	return nil
}

// renderValue writes v as a TOML value.
func renderValue(v any, quote byte) (string, error) {
	switch v := v.(type) {
	case string:
		return renderString(v, quote), nil
	case bool:
		return strconv.FormatBool(v), nil
	case int:
		return strconv.Itoa(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case []string:
		parts := make([]string, len(v))
		for i, s := range v {
			parts[i] = renderString(s, quote)
		}
		return "[" + strings.Join(parts, ", ") + "]", nil
	default:
		return "", fmt.Errorf("%w: a value of type %T", ErrUnsupported, v)
	}
}

// same reports whether a decoded value equals v as Set takes it.
func same(decoded, v any) bool {
	switch v := v.(type) {
	case int:
		return reflect.DeepEqual(decoded, int64(v))
	case []string:
		arr, ok := decoded.([]any)
		if !ok || len(arr) != len(v) {
			return false
		}
		for i := range v {
			if arr[i] != v[i] {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(decoded, v)
	}
}
