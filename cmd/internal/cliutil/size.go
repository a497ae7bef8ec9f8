// Package cliutil holds what the two sluice commands share as wiring: size
// flags, progress display, logging setup, listening on sockets, the soft
// memory limit, and publishing opened images as NBD exports.
package cliutil

import (
	"fmt"
	"strconv"
	"strings"
)

var units = []struct {
	suffix string
	mult   int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"kb", 1000}, {"mb", 1000 * 1000}, {"gb", 1000 * 1000 * 1000}, {"tb", 1000 * 1000 * 1000 * 1000},
	{"b", 1}, {"", 1},
}

// ParseSize parses "262144", "256KiB", "256k" (binary) or "1MB" (decimal).
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	// Longest suffix first: "kib" before "b".
	best := -1
	for i, u := range units {
		if strings.HasSuffix(t, u.suffix) && (best < 0 || len(u.suffix) > len(units[best].suffix)) {
			best = i
		}
	}
	num := strings.TrimSpace(strings.TrimSuffix(t, units[best].suffix))
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit such as 256KiB or 1MiB", s)
	}
	if n > (1<<62)/units[best].mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * units[best].mult, nil
}

// FormatSize renders n bytes for people: "1.5 MiB".
func FormatSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// FormatSizeExact renders n in the largest binary unit that divides it,
// so it parses back to n: "256KiB".
func FormatSizeExact(n int64) string {
	for _, u := range []struct {
		s string
		m int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.m && n%u.m == 0 {
			return fmt.Sprintf("%d%s", n/u.m, u.s)
		}
	}
	return fmt.Sprint(n)
}
