package guest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/snapshot"
	"github.com/sluice-project/sluice/test/testutil"
)

// fioJob is one of the benchmark's fio jobs.
type fioJob struct {
	name string
	args []string
}

var fioJobs = []fioJob{
	{"4k random read, qd1", []string{"--rw=randread", "--bs=4k", "--iodepth=1"}},
	{"4k random read, qd32", []string{"--rw=randread", "--bs=4k", "--iodepth=32"}},
	{"1M sequential read, qd8", []string{"--rw=read", "--bs=1m", "--iodepth=8"}},
}

// BenchmarkFio runs fio on /dev/nbdN, attached by sluiced (attacher
// "kernel", one connection per CPU) with the image wholly in its block
// cache, on a loop device over a copy of the same ext4 image (read from
// the device), and on /dev/nbdM serving that copy through the project's
// NBD server without the block cache, in the same VM: direct I/O, libaio,
// fio's defaults otherwise. Emulation slows both, so only the ratios are reported. Run
// by test/vm's BenchmarkFioInVM (bench/vm/run.sh), once.
func BenchmarkFio(b *testing.B) {
	requireVM(b)
	fio, err := exec.LookPath("fio")
	if err != nil {
		b.Fatalf("fio not in the guest: %v", err)
	}
	runtime := os.Getenv("SLUICE_FIO_RUNTIME")
	if runtime == "" {
		runtime = "5"
	}
	ctx := testContext(b)
	dir := tempDir(b)
	registry, img := pushConverted(b, randomTree("data", 6, 8, 4096, 64<<20))
	a := newAgentConns(b, filepath.Join(dir, "agent"), registry, "60s", "2m", 0)
	sn := a.client()
	c := runContainer(b, ctx, sn, img, "fio", filepath.Join(dir, "ctr"))
	defer func() {
		c.unmount()
		if err := sn.Remove(ctx, c.key); err != nil {
			b.Error(err)
		}
		testutil.RemoveAll(b, ctx, sn)
		a.kill(syscall.SIGTERM)
	}()
	nbd := mountSource(c.imageMnt)

	// Warm: every block once through sluiced, which caches every chunk;
	// the copy is the loop device's file.
	start := time.Now()
	copyPath := filepath.Join(dir, "image.ext4")
	n, err := copyDevice(nbd, copyPath)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("warmed %s: %d MiB in %v", nbd, n>>20, time.Since(start).Round(time.Millisecond))
	loop := losetup(b, copyPath)
	// The same copy through the kernel attacher and the project's NBD
	// server with a plain file behind it, in this process: the transport's
	// share of the cost, without the block cache's.
	fileAtt := snapshot.NewKernelAttacher(filepath.Join(dir, "file-state"), serveImage(b, copyPath))
	defer fileAtt.Close()
	fileDev, err := fileAtt.Attach(ctx, snapshot.Export{Name: "image"})
	if err != nil {
		b.Fatal(err)
	}
	defer fileAtt.Detach(ctx, fileDev)
	devices := []string{nbd, fileDev.Path, loop}
	label := map[string]string{nbd: "sluiced /dev/nbd", fileDev.Path: "file-backed /dev/nbd", loop: "loop"}

	// The two devices take turns, rounds times per job: the emulated
	// machine's speed drifts, so back-to-back runs compare best.
	const rounds = 3
	b.ResetTimer()
	for _, job := range fioJobs {
		iops := map[string][]float64{}
		mibps := map[string][]float64{}
		for range rounds {
			for _, dev := range devices {
				r, err := runFio(fio, dev, runtime, job)
				if err != nil {
					b.Fatalf("fio %s on %s: %v", job.name, dev, err)
				}
				iops[dev] = append(iops[dev], r.IOPS)
				mibps[dev] = append(mibps[dev], r.MiBps)
				b.Logf("%s, %s: %.0f IOPS, %.1f MiB/s", dev, job.name, r.IOPS, r.MiBps)
			}
		}
		for _, dev := range devices[:2] {
			var ratios []float64
			for i := range rounds {
				ratios = append(ratios, iops[dev][i]/iops[loop][i])
			}
			report(b, "fio %s (%d rounds of %ss, warm cache): %s %.0f IOPS %.1f MiB/s, loop %.0f IOPS %.1f MiB/s (medians); ratio median %.2f, rounds %s",
				job.name, rounds, runtime, label[dev], median(iops[dev]), median(mibps[dev]), median(iops[loop]), median(mibps[loop]), median(ratios), fmtRatios(ratios))
		}
	}
	b.StopTimer()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func fmtRatios(v []float64) string {
	parts := make([]string, len(v))
	for i, r := range v {
		parts[i] = fmt.Sprintf("%.2f", r)
	}
	return strings.Join(parts, " ")
}

// copyDevice copies a block device to a file.
func copyDevice(dev, dst string) (int64, error) {
	in, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(out, in, make([]byte, 1<<20))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// losetup attaches file to a free loop device, read-only, until the
// benchmark ends.
func losetup(b *testing.B, file string) string {
	b.Helper()
	out, err := exec.Command("losetup", "-f").Output()
	if err != nil {
		b.Fatalf("losetup -f: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	if out, err := exec.Command("losetup", "-r", dev, file).CombinedOutput(); err != nil {
		b.Fatalf("losetup -r %s %s: %v: %s", dev, file, err, out)
	}
	b.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

type fioResult struct {
	IOPS, MiBps float64
}

func runFio(fio, dev, runtime string, job fioJob) (fioResult, error) {
	args := append([]string{
		"--name=bench", "--filename=" + dev, "--readonly", "--direct=1", "--ioengine=libaio",
		"--time_based", "--runtime=" + runtime, "--ramp_time=1", "--output-format=json",
	}, job.args...)
	out, err := exec.Command(fio, args...).Output()
	if err != nil {
		return fioResult{}, fmt.Errorf("%v: %s", err, out)
	}
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOPS  float64 `json:"iops"`
				BWKiB float64 `json:"bw"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return fioResult{}, fmt.Errorf("fio output: %v\n%s", err, out)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Error != 0 || res.Jobs[0].Read.IOPS <= 0 {
		return fioResult{}, fmt.Errorf("fio: %+v\n%s", res, out)
	}
	return fioResult{IOPS: res.Jobs[0].Read.IOPS, MiBps: res.Jobs[0].Read.BWKiB / 1024}, nil
}
