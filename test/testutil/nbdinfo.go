package testutil

import (
	"encoding/json"
	"testing"
)

// NBDInfoExport is one export as `nbdinfo --json` describes it.
type NBDInfoExport struct {
	Name         string `json:"export-name"`
	Description  string `json:"description"`
	ReadOnly     bool   `json:"is_read_only"`
	CanFlush     bool   `json:"can_flush"`
	CanMultiConn bool   `json:"can_multi_conn"`
	CanTrim      bool   `json:"can_trim"`
	CanZero      bool   `json:"can_zero"`
	BlockMin     int64  `json:"block_size_minimum"`
	BlockPref    int64  `json:"block_size_preferred"`
	BlockMax     int64  `json:"block_size_maximum"`
	Size         int64  `json:"export-size"`
}

// NBDInfoOutput is what `nbdinfo --json` prints.
type NBDInfoOutput struct {
	Protocol   string          `json:"protocol"`
	Structured bool            `json:"structured"`
	Exports    []NBDInfoExport `json:"exports"`
}

// NBDInfo runs `nbdinfo --json` with args (an NBD URI, after --list for
// every export) and decodes what it prints; the test fails if nbdinfo
// does. Callers require nbdinfo first (Require(t, Tool("nbdinfo"))).
func NBDInfo(t testing.TB, args ...string) NBDInfoOutput {
	t.Helper()
	out := runTool(t, "nbdinfo", append([]string{"--json"}, args...)...)
	var info NBDInfoOutput
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo output: %v\n%s", err, out)
	}
	return info
}
