package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/sluice-project/sluice/test/testutil"
)

// The test image: a base layer and an app layer that replaces and deletes
// base files; big is large enough to span several chunks.
var (
	baseLayer = testutil.LayerSpec{
		"etc/":           "",
		"etc/os-release": "base\n",
		"bin/":           "",
		"bin/sh":         "sh\n",
		"usr/":           "",
		"usr/share/":     "",
		"usr/share/big":  strings.Repeat("0123456789abcdef", 64<<10), // 1 MiB
		"usr/share/old":  "old\n",
	}
	appLayer = testutil.LayerSpec{
		"etc/":           "",
		"etc/os-release": "app\n",
		"app/":           "",
		"app/run":        "run\n",
		"usr/":           "",
		"usr/share/":     "",
		"usr/share/old":  testutil.Whiteout,
	}
)

func testContext() context.Context { return context.Background() }

// TestAgentStreamsConvertedImage drives the agent as CRI does: every
// layer of a converted image answers "already exists" (nothing applied),
// a container snapshot on top mounts the image's files, and /metrics shows
// the bytes its reads fetched. Removing the snapshots closes the export.
func TestAgentStreamsConvertedImage(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext()
	reg := newTestRegistry(t, nil)
	img := pushImage(t, reg, "app:v1", nil, baseLayer, appLayer)
	artifact := convert(t, img)
	a := mustStartAgent(t, tempDir(t), func(c *Config) { c.PlainHTTP = []string{reg.host} })
	sn := a.client(t)

	applied, err := unpack(t, ctx, sn, img)
	if err != nil {
		t.Fatal(err)
	}
	if applied != 0 {
		t.Fatalf("%d layers were applied; a converted image needs none", applied)
	}
	if got := a.metric(t, `sluice_placeholders_total`); got != float64(len(img.chain)) {
		t.Errorf("placeholders_total = %v, want %d", got, len(img.chain))
	}
	if got := a.metric(t, `sluice_exports`); got != 1 {
		t.Errorf("exports = %v, want 1", got)
	}
	mounts, err := sn.Prepare(ctx, "container", img.chain[len(img.chain)-1])
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, ctx, mounts, img.files)

	if got := a.metric(t, `sluice_fetched_bytes_total`); got <= 0 {
		t.Errorf("fetched_bytes_total = %v after reading the image", got)
	}
	if got := a.metric(t, `sluice_cache_misses_total`); got <= 0 {
		t.Errorf("cache_misses_total = %v after a cold read", got)
	}
	if got := a.metric(t, `sluice_fault_latency_seconds_count`); got <= 0 {
		t.Errorf("fault_latency_seconds_count = %v after a cold read", got)
	}
	pct := a.metric(t, `sluice_image_percent_complete{artifact="`+artifact.String()+`",image="`+img.ref+`"}`)
	if pct <= 0 || pct > 100 {
		t.Errorf("image_percent_complete = %v", pct)
	}
	if got := a.metric(t, `sluice_fallbacks_total{reason="no artifact"}`); got != -1 {
		t.Errorf("a streamed image counted as a fallback: %v", got)
	}
	fetched := a.metric(t, `sluice_fetched_bytes_total`)

	testutil.RemoveAll(t, ctx, sn)
	if got := a.metric(t, `sluice_exports`); got != 0 {
		t.Errorf("exports = %v after every snapshot is gone", got)
	}
	if got := a.metric(t, `sluice_fetched_bytes_total`); got != fetched {
		t.Errorf("fetched_bytes_total went from %v to %v when the export closed", fetched, got)
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	assertNoLeaks(t, a.dir)
}

// TestAgentFallsBackForUnconvertedImage: an image without an artifact is
// unpacked the ordinary way, and /metrics counts why.
func TestAgentFallsBackForUnconvertedImage(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext()
	reg := newTestRegistry(t, nil)
	img := pushImage(t, reg, "plain:v1", nil, baseLayer, appLayer)
	a := mustStartAgent(t, tempDir(t), func(c *Config) { c.PlainHTTP = []string{reg.host} })
	sn := a.client(t)
	applied, err := unpack(t, ctx, sn, img)
	if err != nil {
		t.Fatal(err)
	}
	if applied != len(img.chain) {
		t.Fatalf("%d of %d layers applied", applied, len(img.chain))
	}
	mounts, err := sn.Prepare(ctx, "container", img.chain[len(img.chain)-1])
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, ctx, mounts, img.files)
	if got := a.metric(t, `sluice_fallbacks_total{reason="no artifact"}`); got != 1 {
		t.Errorf(`fallbacks_total{reason="no artifact"} = %v, want 1 (once per image)`, got)
	}
	if !strings.Contains(a.logs.String(), "pulling it the ordinary way") || !strings.Contains(a.logs.String(), img.ref) {
		t.Error("the fallback was not logged with the image")
	}
}

// TestAgentPolicyRequire: with policy "require", an unconverted image, an
// image whose artifact index is corrupt and an image whose registry is down
// fail their pull with an error naming the image and the reason.
func TestAgentPolicyRequire(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext()
	reg := newTestRegistry(t, nil)
	plain := pushImage(t, reg, "plain:v1", nil, baseLayer)
	corrupt := pushImage(t, reg, "corrupt:v1", nil, appLayer)
	pushCorruptArtifact(t, reg, corrupt)
	down := newTestRegistry(t, nil)
	gone := pushImage(t, down, "gone:v1", nil, baseLayer)
	convert(t, gone)
	down.srv.Close()

	a := mustStartAgent(t, tempDir(t), func(c *Config) {
		c.Policy = "require"
		c.PlainHTTP = []string{reg.host, down.host}
	})
	sn := a.client(t)
	for _, tc := range []struct {
		img    *testImage
		reason string
		more   []string
	}{
		{plain, "no artifact", nil},
		{corrupt, "artifact index corrupt", nil},
		{gone, "registry unreachable", []string{"registry " + down.host}},
	} {
		_, err := unpack(t, ctx, sn, tc.img)
		errorContains(t, tc.img.ref, err, append([]string{tc.img.ref, tc.reason, `policy "require"`}, tc.more...)...)
		if !errdefs.IsFailedPrecondition(err) {
			t.Errorf("%s: error %v is not FailedPrecondition", tc.img.ref, err)
		}
		if got := a.metric(t, `sluice_refusals_total{reason="`+tc.reason+`"}`); got != 1 {
			t.Errorf(`refusals_total{reason=%q} = %v, want 1`, tc.reason, got)
		}
	}
	if got := a.metric(t, `sluice_placeholders_total`); got != 0 {
		t.Errorf("placeholders_total = %v", got)
	}
}

// TestAgentBadArtifactsFallBack: under the default policy a corrupt index
// and a registry that is down are logged with a clear reason and counted,
// and the image is unpacked the ordinary way (where it can be).
func TestAgentBadArtifactsFallBack(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext()
	reg := newTestRegistry(t, nil)
	corrupt := pushImage(t, reg, "corrupt:v1", nil, baseLayer, appLayer)
	pushCorruptArtifact(t, reg, corrupt)
	a := mustStartAgent(t, tempDir(t), func(c *Config) { c.PlainHTTP = []string{reg.host} })
	sn := a.client(t)
	if applied, err := unpack(t, ctx, sn, corrupt); err != nil || applied != len(corrupt.chain) {
		t.Fatalf("unpack with a corrupt artifact: %d layers applied, %v", applied, err)
	}
	if got := a.metric(t, `sluice_fallbacks_total{reason="artifact index corrupt"}`); got != 1 {
		t.Errorf(`fallbacks_total{reason="artifact index corrupt"} = %v, want 1`, got)
	}
	if !strings.Contains(a.logs.String(), "malformed sluice index") {
		t.Error("the log does not say what is wrong with the artifact")
	}

	reg.srv.Close()
	gone := &testImage{ref: corrupt.ref, manifest: "sha256:" + strings.Repeat("1", 64), layers: corrupt.layers[:1], chain: []string{"sha256:" + strings.Repeat("2", 64)}}
	// containerd itself cannot download the layer either; the agent's part
	// is the fallback, its reason and the registry's name.
	_, err := sn.Prepare(ctx, "extract-gone", "", withUnpackLabels(gone, 0))
	if err != nil {
		t.Fatalf("Prepare under fallback with the registry down: %v", err)
	}
	if got := a.metric(t, `sluice_fallbacks_total{reason="registry unreachable"}`); got != 1 {
		t.Errorf(`fallbacks_total{reason="registry unreachable"} = %v, want 1`, got)
	}
	if !strings.Contains(a.logs.String(), "registry "+reg.host) {
		t.Error("the log does not name the registry that is down")
	}
}

// TestAgentHealthz: ok while serving; the kernel attacher is refused
// clearly; the attacher choice is logged with its reason.
func TestAgentHealthz(t *testing.T) {
	testutil.RequirePortable(t)
	a := mustStartAgent(t, tempDir(t), nil)
	resp, err := http.Get("http://" + a.metricsAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %d", resp.StatusCode)
	}
	// Auto chooses the kernel attacher where the nbd driver works; where
	// it does not (as on this project's CI hosts), portable, saying why.
	logs := a.logs.String()
	kernelUsable := strings.Contains(logs, "using kernel attacher")
	if !kernelUsable && !(strings.Contains(logs, "kernel unavailable: ") && strings.Contains(logs, "using portable attacher")) {
		t.Errorf("the attacher choice is not logged with its reason:\n%s", logs)
	}
	for _, p := range []string{a.cfg.Address, a.cfg.NBDSocket} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want a socket readable by root only", p, fi.Mode(), err)
		}
	}
	if !kernelUsable {
		_, err = startTestAgent(t, tempDir(t), func(c *Config) { c.Attacher = "kernel" })
		errorContains(t, "attacher kernel", err, `attacher "kernel": kernel unavailable: `)
	}
}

// TestAgentSockets: a socket a dead agent left is removed; a live agent's
// socket makes a second agent refuse to start.
func TestAgentSockets(t *testing.T) {
	testutil.RequirePortable(t)
	dir := tempDir(t)
	stale := filepath.Join(dir, "snap.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("the stale socket is not there: %v", err)
	}
	a := mustStartAgent(t, dir, nil)
	if !strings.Contains(a.logs.String(), "removed a stale socket") {
		t.Error("removing the stale socket was not logged")
	}
	_, err = startTestAgent(t, dir, func(c *Config) { c.Root = filepath.Join(dir, "root2"); c.Cache.Dir = filepath.Join(dir, "cache2") })
	errorContains(t, "second agent", err, "address", "another sluiced is running")
	// The first one still serves.
	if _, err := a.client(t).Stat(testContext(), "nothing"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat on the first agent after a second one was refused: %v", err)
	}
}

// TestAgentSharedBaseMaterialized: a streamed image leaves a placeholder
// for its base layer; an unconverted image on the same base is unpacked on
// top of it, so the agent fetches the base layer from the registry
// (FetchLayer) to fill the placeholder, and the second image's rootfs is
// whole.
func TestAgentSharedBaseMaterialized(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext()
	reg := newTestRegistry(t, nil)
	streamed := pushImage(t, reg, "app:v1", nil, baseLayer, appLayer)
	convert(t, streamed)
	other := pushImage(t, reg, "other:v1", nil, baseLayer, testutil.LayerSpec{"other/": "", "other/file": "other\n"})
	if streamed.chain[0] != other.chain[0] {
		t.Fatal("the images do not share their base layer")
	}
	a := mustStartAgent(t, tempDir(t), func(c *Config) { c.PlainHTTP = []string{reg.host} })
	sn := a.client(t)
	if applied, err := unpack(t, ctx, sn, streamed); err != nil || applied != 0 {
		t.Fatalf("streamed image: %d layers applied, %v", applied, err)
	}
	if applied, err := unpack(t, ctx, sn, other); err != nil || applied != 1 {
		t.Fatalf("unconverted image on the shared base: %d layers applied, %v; want its own layer only", applied, err)
	}
	mounts, err := sn.Prepare(ctx, "container", other.chain[1])
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, ctx, mounts, other.files)
	if got := a.metric(t, `sluice_materializations_total`); got != 1 {
		t.Errorf("materializations_total = %v, want 1", got)
	}
	testutil.RemoveAll(t, ctx, sn)
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	assertNoLeaks(t, a.dir)
}
