package main

import (
	"context"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-project/sluice/test/testutil"
)

// criBackend stands in for containerd's CRI image service behind the
// proxy: it answers pulls (the test then unpacks through the snapshotter,
// as containerd would) and notes the credentials it was given.
type criBackend struct {
	runtime.UnimplementedImageServiceServer
	passwords chan string
}

func (b *criBackend) PullImage(_ context.Context, r *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	b.passwords <- r.GetAuth().GetPassword()
	return &runtime.PullImageResponse{ImageRef: "sha256:pulled"}, nil
}

// TestAgentCRIKeychain streams an image from a registry that wants a
// password the node does not have, with the credentials of a pull through
// the agent's CRI image service proxy (as kubelet sends a pull secret);
// the secret is forwarded to containerd and never reaches a log, a file
// or /metrics.
func TestAgentCRIKeychain(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext()
	const user, pass = "kubelet-pull", "pull-Secret-77"
	reg := newTestRegistry(t, basicAuth(user, pass))
	kc := staticKeychain{authn.FromConfig(authn.AuthConfig{Username: user, Password: pass})}
	img := pushImage(t, reg, "private/app:v1", kc, baseLayer, appLayer)
	convert(t, img, imageconvKeychain(kc))

	dir := tempDir(t)
	be := &criBackend{passwords: make(chan string, 1)}
	beSock := filepath.Join(dir, "containerd.sock")
	l, err := net.Listen("unix", beSock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtime.RegisterImageServiceServer(srv, be)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	criSock := filepath.Join(dir, "cri-image.sock")
	a := mustStartAgent(t, dir, func(c *Config) {
		c.Policy = "require"
		c.PlainHTTP = []string{reg.host}
		c.CRIKeychain = CRIKeychainConfig{EnableKeychain: true, Address: criSock, ImageServicePath: beSock}
	})
	sn := a.client(t)

	// No pull through the proxy: the node has no credentials.
	_, err = unpack(t, ctx, sn, img)
	errorContains(t, "before any pull through the proxy", err, img.ref, "registry denied access", "registry "+reg.host)

	conn, err := grpc.NewClient("unix://"+criSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if fi, err := os.Stat(criSock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the proxy's socket: %v, %v; want mode 0600", fi.Mode(), err)
	}
	cri := runtime.NewImageServiceClient(conn)
	if _, err := cri.PullImage(ctx, &runtime.PullImageRequest{
		Image: &runtime.ImageSpec{Image: img.ref},
		Auth:  &runtime.AuthConfig{Username: user, Password: pass},
	}); err != nil {
		t.Fatalf("PullImage through the proxy: %v", err)
	}
	if got := <-be.passwords; got != pass {
		t.Errorf("containerd got password %q, not the pull's", got)
	}
	if applied, err := unpack(t, ctx, sn, img); err != nil || applied != 0 {
		t.Fatalf("unpack after the pull with credentials: %d layers applied, %v", applied, err)
	}
	mounts, err := sn.Prepare(ctx, "container", img.chain[len(img.chain)-1])
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, ctx, mounts, img.files) // reads fetch chunks, with the pull's credentials
	if got := a.metric(t, `sluice_cri_pulls_total{credentials="yes"}`); got != 1 {
		t.Errorf(`sluice_cri_pulls_total{credentials="yes"} = %v, want 1`, got)
	}
	if got := a.metric(t, `sluice_cri_credential_images`); got != 1 {
		t.Errorf(`sluice_cri_credential_images = %v, want 1`, got)
	}
	if strings.Contains(a.metrics(t), pass) {
		t.Error("/metrics holds the password")
	}
	testutil.RemoveAll(t, ctx, sn)
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(a.logs.String(), pass) {
		t.Error("the log holds the password")
	}
	if !strings.Contains(a.logs.String(), `"credentials":true`) {
		t.Error("the log does not say the pull came with credentials")
	}
	// Nothing the agent wrote holds it (state, saved artifacts, cache).
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.Contains(string(b), pass) {
			t.Errorf("%s holds the password", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
