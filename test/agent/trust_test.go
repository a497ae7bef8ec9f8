package agent

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// trustEnv is a registry of the test's own holding A and B converted, and
// the means to graft artifacts onto A as anyone with push rights could.
type trustEnv struct {
	t    *testing.T
	e    *env
	addr string
	a, b *testImage
	ctx  context.Context
}

func newTrustEnv(t *testing.T, e *env, signKey string) *trustEnv {
	t.Helper()
	reg := startRegistry(t, filepath.Join(t.TempDir(), "registry"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	te := &trustEnv{t: t, e: e, addr: reg.Addr, ctx: ctx}
	te.a = te.pushAndConvert(e.images[repoA], reg.Addr+"/trust/a:v1", signKey)
	te.b = te.pushAndConvert(e.images[repoB], reg.Addr+"/trust/b:v1", signKey)
	return te
}

// pushAndConvert pushes ti's image as ref and converts it with the CLI,
// signed with signKey if given.
func (te *trustEnv) pushAndConvert(ti *testImage, ref, signKey string) *testImage {
	te.t.Helper()
	out, err := describe(ti.img, ref)
	if err != nil {
		te.t.Fatal(err)
	}
	out.listing = ti.listing
	if err := push(te.ctx, out); err != nil {
		te.t.Fatal(err)
	}
	args := []string{"convert", "--plain-http", out.ref}
	if signKey != "" {
		args = append(args, "--sign-key", signKey)
	}
	if b, err := te.e.run(te.ctx, te.e.sluice, args...); err != nil {
		te.t.Fatalf("sluice %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return out
}

// pinned is ti named by digest, as a pod pinned to the image names it.
func (te *trustEnv) pinned(ti *testImage) *testImage {
	p := *ti
	p.ref = ti.ref[:strings.LastIndex(ti.ref, ":")] + "@" + ti.digest
	return &p
}

func (te *trustEnv) repo(ti *testImage) name.Repository {
	ref, err := name.ParseReference(ti.ref, name.Insecure)
	if err != nil {
		te.t.Fatal(err)
	}
	return ref.Context()
}

// referrers lists the manifests that refer to digest d in ti's repository,
// of the given artifact type.
func (te *trustEnv) referrers(ti *testImage, d, artifactType string) []v1.Descriptor {
	te.t.Helper()
	idx, err := remote.Referrers(te.repo(ti).Digest(d), remote.WithContext(te.ctx))
	if err != nil {
		te.t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		te.t.Fatal(err)
	}
	var out []v1.Descriptor
	for _, m := range im.Manifests {
		if m.ArtifactType == artifactType {
			out = append(out, m)
		}
	}
	return out
}

// copyManifest copies the manifest d of from's repository, with its blobs,
// into to's repository, its subject rewritten to subject (the manifest
// digest changes with it), and returns the copy's digest.
func (te *trustEnv) copyManifest(from *testImage, d v1.Hash, to *testImage, subject v1.Descriptor) v1.Hash {
	te.t.Helper()
	got, err := remote.Get(te.repo(from).Digest(d.String()), remote.WithContext(te.ctx))
	if err != nil {
		te.t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(got.Manifest, &m); err != nil {
		te.t.Fatal(err)
	}
	for _, l := range append(m["layers"].([]any), m["config"]) {
		ld := l.(map[string]any)["digest"].(string)
		layer, err := remote.Layer(te.repo(from).Digest(ld), remote.WithContext(te.ctx))
		if err != nil {
			te.t.Fatal(err)
		}
		if err := remote.WriteLayer(te.repo(to), layer, remote.WithContext(te.ctx)); err != nil {
			te.t.Fatal(err)
		}
	}
	m["subject"] = map[string]any{"mediaType": string(subject.MediaType), "digest": subject.Digest.String(), "size": subject.Size}
	raw, err := json.Marshal(m)
	if err != nil {
		te.t.Fatal(err)
	}
	nd := artifact.Digest(raw)
	if err := remote.Put(te.repo(to).Digest(nd.String()), rawManifest(raw), remote.WithContext(te.ctx)); err != nil {
		te.t.Fatal(err)
	}
	return nd
}

func (te *trustEnv) descriptor(ti *testImage, d string) v1.Descriptor {
	te.t.Helper()
	desc, err := remote.Head(te.repo(ti).Digest(d), remote.WithContext(te.ctx))
	if err != nil {
		te.t.Fatal(err)
	}
	return *desc
}

// graftFromB attaches B's artifact to A's manifest as A's (a copy with its
// subject rewritten), and, if B's artifact is signed, B's signature too,
// re-pointed at the copy. It returns the grafted artifact's digest.
func (te *trustEnv) graftFromB() v1.Hash {
	te.t.Helper()
	bArts := te.referrers(te.b, te.b.digest, artifact.ArtifactType)
	if len(bArts) != 1 {
		te.t.Fatalf("B has %d artifacts, want 1", len(bArts))
	}
	grafted := te.copyManifest(te.b, bArts[0].Digest, te.a, te.descriptor(te.a, te.a.digest))
	for _, sig := range te.referrers(te.b, bArts[0].Digest.String(), signature.BundleMediaType) {
		te.copyManifest(te.b, sig.Digest, te.a, te.descriptor(te.a, grafted.String()))
	}
	return grafted
}

// keyPair writes a cosign-format key pair under dir: the private key's
// password is $COSIGN_PASSWORD, set for the test.
func keyPair(t *testing.T, dir, name string) (priv, pub string) {
	t.Helper()
	t.Setenv(signature.PasswordEnv, "trust-test")
	privPEM, pubPEM, err := signature.GenerateKey([]byte("trust-test"))
	if err != nil {
		t.Fatal(err)
	}
	priv, pub = filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	if err := os.WriteFile(priv, privPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

// logNames reports whether one line of the agent's log names all of words.
func logNames(log string, words ...string) bool {
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(line, w)
		}
		if all {
			return true
		}
	}
	return false
}

// TestTrustGraftAny: under the default policy, B's artifact grafted onto
// A's pinned digest beside A's own never decides A's root filesystem: the
// pull falls back, the pod runs A's own content, and the grafted and the
// own artifact are counted as not used. sluice verify says A's own
// artifact matches and names both digests for the graft.
func TestTrustGraftAny(t *testing.T) {
	e := getEnv(t)
	te := newTrustEnv(t, e, "")
	own := te.referrers(te.a, te.a.digest, artifact.ArtifactType)[0].Digest

	out, err := e.run(te.ctx, e.sluice, "verify", "--plain-http", te.a.ref)
	if err != nil || !strings.Contains(string(out), "match") || !strings.Contains(string(out), own.String()) {
		t.Fatalf("sluice verify of a converted image: %v\n%s", err, out)
	}
	grafted := te.graftFromB()
	out, err = e.run(te.ctx, e.sluice, "verify", "--plain-http", te.a.ref)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("sluice verify with a graft: %v, want exit 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "MISMATCH") || !strings.Contains(string(out), grafted.String()) || !strings.Contains(string(out), "reconversion gives "+own.String()) {
		t.Errorf("sluice verify does not name the grafted %s and the reconverted %s:\n%s", grafted, own, out)
	}
	t.Logf("sluice verify:\n%s", out)

	n := newNode(t, e, nodeOpts{registries: []string{te.addr}})
	n.pull(te.pinned(te.a).ref)
	if v := n.metric("sluice_image_mounts"); v != 0 {
		t.Errorf("sluice_image_mounts = %v: an ambiguous image was streamed", v)
	}
	m, err := n.agent.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if v := m[`sluice_fallbacks_total{reason="several artifacts, none trusted"}`]; v < 1 {
		t.Errorf("no fallback counted as %q: %v", "several artifacts, none trusted", m)
	}
	if v, _ := sum(m, "sluice_rejected_artifacts_total"); v < 2 {
		t.Errorf("sluice_rejected_artifacts_total = %v, want both artifacts counted", v)
	}
	if !logNames(n.agent.log(), "trust/a", grafted.String()) {
		t.Errorf("no log line names the image and the grafted artifact %s:\n%s", grafted, n.agent.logTail(30))
	}
	pod, podCfg := n.runPod("graft")
	n.checkRootfs(pod, podCfg, "list", te.pinned(te.a))
}

// TestTrustSigned: under policy signed, A's signed artifact streams while
// an unsigned artifact grafted beside it and B's signed artifact re-pointed
// at A (its signature moved along) are ignored and counted; a node trusting
// another key streams nothing and counts the unknown key; a corrupt
// signature blob is refused and logged; a restart with the registry down
// keeps the image's verdict.
func TestTrustSigned(t *testing.T) {
	e := getEnv(t)
	keys := t.TempDir()
	priv, pub := keyPair(t, keys, "ci")
	_, otherPub := keyPair(t, keys, "other")
	te := newTrustEnv(t, e, priv)
	own := te.referrers(te.a, te.a.digest, artifact.ArtifactType)[0].Digest
	// An unsigned artifact beside it: A converted again, other chunk size.
	if b, err := e.run(te.ctx, e.sluice, "convert", "--plain-http", "--chunk-size", "64KiB", te.a.ref); err != nil {
		t.Fatalf("sluice convert: %v\n%s", err, b)
	}
	grafted := te.graftFromB()
	if n := len(te.referrers(te.a, te.a.digest, artifact.ArtifactType)); n != 3 {
		t.Fatalf("A has %d artifacts, want its own, an unsigned one and B's", n)
	}

	t.Run("own key", func(t *testing.T) {
		n := newNode(t, e, nodeOpts{registries: []string{te.addr}, trustKeys: []string{pub}})
		n.pull(te.pinned(te.a).ref)
		if v := n.metric("sluice_image_mounts"); v != 1 {
			t.Fatalf("sluice_image_mounts = %v, want A streamed from its signed artifact", v)
		}
		m, err := n.agent.metrics()
		if err != nil {
			t.Fatal(err)
		}
		if m[`sluice_rejected_artifacts_total{reason="unsigned"}`] < 1 || m[`sluice_rejected_artifacts_total{reason="signature of another manifest"}`] < 1 {
			t.Errorf("rejections not counted by reason: %v", m)
		}
		log := n.agent.log()
		if !logNames(log, "trust/a", grafted.String(), "signature of another manifest") {
			t.Errorf("no log line names the image, the re-pointed artifact %s and why:\n%s", grafted, n.agent.logTail(30))
		}
		if !logNames(log, "export opened", own.String()) {
			t.Errorf("A was not served from its own artifact %s:\n%s", own, n.agent.logTail(30))
		}
		pod, podCfg := n.runPod("signed")
		n.checkRootfs(pod, podCfg, "list", te.pinned(te.a))
	})

	t.Run("another key", func(t *testing.T) {
		n := newNode(t, e, nodeOpts{registries: []string{te.addr}, trustKeys: []string{otherPub}})
		n.pull(te.pinned(te.a).ref)
		if v := n.metric("sluice_image_mounts"); v != 0 {
			t.Fatalf("sluice_image_mounts = %v with a key that signed nothing", v)
		}
		m, _ := n.agent.metrics()
		if m[`sluice_rejected_artifacts_total{reason="unknown key"}`] < 1 || m[`sluice_fallbacks_total{reason="no trusted artifact"}`] < 1 {
			t.Errorf("unknown key not counted: %v", m)
		}
		pod, podCfg := n.runPod("otherkey")
		n.checkRootfs(pod, podCfg, "list", te.pinned(te.a))
	})

	t.Run("corrupt signature", func(t *testing.T) {
		// B's artifact (signed) gets a second signature whose bundle is
		// garbage. The node trusts another key, so it reads both
		// signatures: the good one by an unknown key, the corrupt one.
		bArt := te.referrers(te.b, te.b.digest, artifact.ArtifactType)[0]
		garbage := static.NewLayer([]byte(`{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "truncated`), signature.BundleMediaType)
		if err := remote.WriteLayer(te.repo(te.b), garbage, remote.WithContext(te.ctx)); err != nil {
			t.Fatal(err)
		}
		good := te.referrers(te.b, bArt.Digest.String(), signature.BundleMediaType)[0]
		got, err := remote.Get(te.repo(te.b).Digest(good.Digest.String()), remote.WithContext(te.ctx))
		if err != nil {
			t.Fatal(err)
		}
		var sig v1.Manifest
		if err := json.Unmarshal(got.Manifest, &sig); err != nil {
			t.Fatal(err)
		}
		gd, _ := garbage.Digest()
		gs, _ := garbage.Size()
		sig.Layers[0].Digest, sig.Layers[0].Size = gd, gs
		sig.Annotations = map[string]string{"test": "corrupt"}
		raw, _ := json.Marshal(sig)
		if err := remote.Put(te.repo(te.b).Digest(artifact.Digest(raw).String()), rawManifest(raw), remote.WithContext(te.ctx)); err != nil {
			t.Fatal(err)
		}
		n := newNode(t, e, nodeOpts{registries: []string{te.addr}, trustKeys: []string{otherPub}, noSandbox: true})
		n.pull(te.pinned(te.b).ref)
		m, _ := n.agent.metrics()
		if m[`sluice_rejected_artifacts_total{reason="corrupt signature"}`] < 1 {
			t.Errorf("the corrupt signature is not counted: %v", m)
		}
		if !logNames(n.agent.log(), "trust/b", bArt.Digest.String(), "corrupt signature") {
			t.Errorf("no log line names the image, the artifact and the corrupt signature:\n%s", n.agent.logTail(30))
		}
	})

	t.Run("restart registry down", func(t *testing.T) {
		storage := filepath.Join(t.TempDir(), "registry")
		reg := startRegistry(t, storage)
		ti := te.pushAndConvert(e.images[repoA], reg.Addr+"/down/a:v1", priv)
		n := newNode(t, e, nodeOpts{registries: []string{reg.Addr}, trustKeys: []string{pub}})
		n.pull(ti.ref)
		pod, podCfg := n.runPod("down")
		id := n.createContainer(pod, podCfg, "reader", ti.ref, "/bin/sleep", "3600")
		n.crictl("start", id)
		// The image whole in the cache first (background fetch, which
		// waits for the start's faults to stop): the registry is down
		// from here on.
		var pct float64
		if err := waitFor(2*time.Minute, func() bool {
			pct = n.labelled("sluice_image_percent_complete")
			return pct >= 100
		}); err != nil {
			t.Fatalf("the image is %v%% in the cache after 2 min of background streaming", pct)
		}
		reg.Stop()
		n.agent.stop(t)
		if err := n.agent.start(e.sluiced); err != nil {
			t.Fatal(err)
		}
		out, err := n.containerd.Crictl(te.ctx, "exec", id, "/bin/sh", "-c", listScript)
		if err != nil {
			t.Fatalf("the running container after a restart with the registry down: %v", err)
		}
		got, err := parseListing(string(out))
		if err != nil {
			t.Fatal(err)
		}
		if d := ti.listing.diff(got, 30); len(d) > 0 {
			t.Errorf("root filesystem after the restart differs:\n%s", strings.Join(d, "\n"))
		}
		if v := n.metric("sluice_image_mounts"); v != 1 {
			t.Errorf("sluice_image_mounts = %v after the restart, want the signed image adopted", v)
		}
		if v := n.labelled("sluice_rejected_artifacts_total"); v != 0 {
			t.Errorf("the saved verdict was not kept: %v artifacts rejected after the restart", v)
		}
	})
}
