package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestAgentRestartKeepsMounts: the agent stops while a container's rootfs
// is mounted; the image mount stays, the next agent adopts it (same export
// name, the artifact digest), and reads of blocks never read before go on.
func TestAgentRestartKeepsMounts(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext()
	reg := newTestRegistry(t, nil)
	img := pushImage(t, reg, "app:v1", nil, baseLayer, appLayer)
	convert(t, img)
	dir := tempDir(t)
	edit := func(c *Config) { c.PlainHTTP = []string{reg.host} }
	a := mustStartAgent(t, dir, edit)
	rootfs := mountContainer(t, ctx, a, img)
	if b, err := os.ReadFile(filepath.Join(rootfs, "app/run")); err != nil || string(b) != "run\n" {
		t.Fatalf("app/run before the restart: %q, %v", b, err)
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}

	b := mustStartAgent(t, dir, edit)
	if !strings.Contains(b.logs.String(), "adopted image mount") {
		t.Error("the new agent did not adopt the image mount")
	}
	// Never read before: served by the new agent through the same device.
	if got, err := os.ReadFile(filepath.Join(rootfs, "usr/share/big")); err != nil || string(got) != img.files["usr/share/big"] {
		t.Fatalf("usr/share/big after the restart: %d bytes, %v", len(got), err)
	}
	if got := b.metric(t, `sluice_fetched_bytes_total`); got <= 0 {
		t.Errorf("the new agent fetched %v bytes for a cold read", got)
	}
	if err := mount.UnmountAll(rootfs, 0); err != nil {
		t.Fatal(err)
	}
	testutil.RemoveAll(t, ctx, b.client(t))
	if err := b.close(); err != nil {
		t.Fatal(err)
	}
	assertNoLeaks(t, dir)
}

// TestAgentRestartWithRegistryDown: the image is fully cached, the agent
// restarts while the registry is down, and adopts the image mount from the
// artifact it remembered: the container reads on. Once the image is no
// longer used the memo goes.
func TestAgentRestartWithRegistryDown(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext()
	reg := newTestRegistry(t, nil)
	img := pushImage(t, reg, "app:v1", nil, baseLayer, appLayer)
	artifact := convert(t, img)
	dir := tempDir(t)
	edit := func(c *Config) {
		c.PlainHTTP = []string{reg.host}
		c.Cache.BackgroundRate = "64MiB" // the whole image is cached soon
	}
	a := mustStartAgent(t, dir, edit)
	rootfs := mountContainer(t, ctx, a, img)
	percent := `sluice_image_percent_complete{artifact="` + artifact.String() + `",image="` + img.ref + `"}`
	for deadline := time.Now().Add(time.Minute); a.metric(t, percent) < 100; {
		if time.Now().After(deadline) {
			t.Fatalf("the image was not fully cached in a minute: %v%%", a.metric(t, percent))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	reg.srv.Close()

	b := mustStartAgent(t, dir, edit)
	for _, want := range []string{"registry unreachable: serving the image from the artifact looked up before", "adopted image mount"} {
		if !strings.Contains(b.logs.String(), want) {
			t.Errorf("the new agent's log lacks %q", want)
		}
	}
	if got, err := os.ReadFile(filepath.Join(rootfs, "usr/share/big")); err != nil || string(got) != img.files["usr/share/big"] {
		t.Fatalf("usr/share/big after a restart with the registry down: %d bytes, %v", len(got), err)
	}
	if got := b.metric(t, `sluice_cache_hits_total`); got <= 0 {
		t.Errorf("cache_hits_total = %v: the read did not come from the cache", got)
	}
	if err := mount.UnmountAll(rootfs, 0); err != nil {
		t.Fatal(err)
	}
	testutil.RemoveAll(t, ctx, b.client(t))
	if memos, _ := filepath.Glob(filepath.Join(dir, "root", "artifacts", "*")); len(memos) != 0 {
		t.Errorf("artifact memos left after the image is gone: %v", memos)
	}
	if err := b.close(); err != nil {
		t.Fatal(err)
	}
	assertNoLeaks(t, dir)
}

// mountContainer unpacks img through agent a, prepares a container
// snapshot on top and mounts it at rootfs under the agent's directory
// (unmounted when the test ends, if the test has not done it).
func mountContainer(t *testing.T, ctx context.Context, a *testAgent, img *testImage) (rootfs string) {
	t.Helper()
	sn := a.client(t)
	if _, err := unpack(t, ctx, sn, img); err != nil {
		t.Fatal(err)
	}
	mounts, err := sn.Prepare(ctx, "container", img.chain[len(img.chain)-1])
	if err != nil {
		t.Fatal(err)
	}
	rootfs = filepath.Join(a.dir, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mount.All(mounts, rootfs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mount.UnmountAll(rootfs, 0) })
	return rootfs
}
