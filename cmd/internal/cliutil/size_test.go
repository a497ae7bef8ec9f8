package cliutil

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"262144": 262144, "256KiB": 256 << 10, "256k": 256 << 10, "1MiB": 1 << 20,
		"1m": 1 << 20, "2GiB": 2 << 30, "1MB": 1000000, "4096b": 4096, " 64 KiB ": 64 << 10,
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "abc", "-1", "1.5MiB", "99999999999TiB", "KiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) succeeded", bad)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 3 << 30: "3.0 GiB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}
