package testutil

import (
	"bytes"
	"encoding/json"
	"testing"
)

// Fio runs fio's nbd engine read-only against the NBD URI uri, one subtest
// per job: random 4 KiB reads at queue depth 16, then sequential 1 MiB
// reads at depth 4, 2 s each. Each job must finish without error having
// read something. Callers require fio first (Require(t, Tool("fio"))).
func Fio(t *testing.T, uri string) {
	t.Helper()
	for _, job := range []struct {
		name string
		args []string
	}{
		{"randread", []string{"--rw=randread", "--bs=4k", "--iodepth=16"}},
		{"seqread", []string{"--rw=read", "--bs=1m", "--iodepth=4"}},
	} {
		t.Run(job.name, func(t *testing.T) {
			args := append([]string{
				"--name=" + job.name, "--ioengine=nbd", "--uri=" + uri,
				"--readonly", "--time_based", "--runtime=2", "--output-format=json",
			}, job.args...)
			out := runTool(t, "fio", args...)
			var res struct {
				Jobs []struct {
					Error int `json:"error"`
					Read  struct {
						IOBytes int64   `json:"io_bytes"`
						IOPS    float64 `json:"iops"`
					} `json:"read"`
				} `json:"jobs"`
			}
			// The nbd engine may print a line of its own before the JSON.
			if i := bytes.IndexByte(out, '{'); i > 0 {
				out = out[i:]
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("fio output: %v\n%s", err, out)
			}
			if len(res.Jobs) != 1 || res.Jobs[0].Error != 0 || res.Jobs[0].Read.IOBytes <= 0 {
				t.Fatalf("fio %s: %+v\n%s", job.name, res, out)
			}
			t.Logf("fio %s: %d bytes read, %.0f IOPS", job.name, res.Jobs[0].Read.IOBytes, res.Jobs[0].Read.IOPS)
		})
	}
}
