package crikeychain

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// backend is a CRI image service that records what reaches it: a fake
// for the one interface the proxy forwards to (test/agent runs the proxy
// in front of containerd's).
type backend struct {
	runtime.UnimplementedImageServiceServer
	mu    sync.Mutex
	calls []string
	auths []*runtime.AuthConfig
}

func (b *backend) note(method string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, method)
}

func (b *backend) ListImages(context.Context, *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	b.note("ListImages")
	return &runtime.ListImagesResponse{Images: []*runtime.Image{{Id: "sha256:1"}}}, nil
}

func (b *backend) StreamImages(_ *runtime.StreamImagesRequest, s grpc.ServerStreamingServer[runtime.StreamImagesResponse]) error {
	b.note("StreamImages")
	for _, id := range []string{"sha256:1", "sha256:2"} {
		if err := s.Send(&runtime.StreamImagesResponse{Images: []*runtime.Image{{Id: id}}}); err != nil {
			return err
		}
	}
	return nil
}

func (b *backend) ImageStatus(_ context.Context, r *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	b.note("ImageStatus")
	if r.GetImage().GetImage() == "missing" {
		return nil, status.Error(codes.NotFound, "no image named missing")
	}
	return &runtime.ImageStatusResponse{Image: &runtime.Image{Id: "sha256:1"}}, nil
}

func (b *backend) PullImage(_ context.Context, r *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	b.note("PullImage")
	b.mu.Lock()
	b.auths = append(b.auths, r.GetAuth())
	b.mu.Unlock()
	return &runtime.PullImageResponse{ImageRef: "sha256:pulled"}, nil
}

func (b *backend) RemoveImage(context.Context, *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	b.note("RemoveImage")
	return &runtime.RemoveImageResponse{}, nil
}

func (b *backend) ImageFsInfo(context.Context, *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	b.note("ImageFsInfo")
	return &runtime.ImageFsInfoResponse{}, nil
}

// serve serves register's services on a new unix socket in dir.
func serve(t *testing.T, dir, name string, register func(*grpc.Server)) string {
	t.Helper()
	sock := filepath.Join(dir, name)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(ServerOptions()...)
	register(s)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return sock
}

// setup runs a backend, the proxy in front of it, and returns a client of
// the proxy and the proxy's log.
func setup(t *testing.T) (*backend, *Proxy, runtime.ImageServiceClient, *bytes.Buffer) {
	t.Helper()
	dir := t.TempDir()
	be := &backend{}
	beSock := serve(t, dir, "containerd.sock", func(s *grpc.Server) { runtime.RegisterImageServiceServer(s, be) })
	var logs bytes.Buffer
	ctx := zerolog.New(&logs).Level(zerolog.DebugLevel).WithContext(context.Background())
	p, err := NewProxy(ctx, NewStore(), beSock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	sock := serve(t, dir, "proxy.sock", p.Register)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return be, p, runtime.NewImageServiceClient(conn), &logs
}

// TestProxyForwardsEveryCall calls each method of the CRI image service
// (as the API version linked lists them) through the proxy: each reaches
// the backend, and its answer or error comes back unchanged.
func TestProxyForwardsEveryCall(t *testing.T) {
	be, _, c, _ := setup(t)
	ctx := context.Background()
	img := &runtime.ImageSpec{Image: "registry.example.com/app:v1"}
	calls := map[string]func() error{
		"ListImages": func() error {
			r, err := c.ListImages(ctx, &runtime.ListImagesRequest{})
			if err == nil && len(r.Images) != 1 {
				err = errors.New("answer lost")
			}
			return err
		},
		"ImageStatus": func() error {
			_, err := c.ImageStatus(ctx, &runtime.ImageStatusRequest{Image: img})
			return err
		},
		"PullImage": func() error {
			r, err := c.PullImage(ctx, &runtime.PullImageRequest{Image: img})
			if err == nil && r.ImageRef != "sha256:pulled" {
				err = errors.New("answer lost")
			}
			return err
		},
		"RemoveImage": func() error {
			_, err := c.RemoveImage(ctx, &runtime.RemoveImageRequest{Image: img})
			return err
		},
		"ImageFsInfo": func() error {
			_, err := c.ImageFsInfo(ctx, &runtime.ImageFsInfoRequest{})
			return err
		},
		"StreamImages": func() error {
			s, err := c.StreamImages(ctx, &runtime.StreamImagesRequest{})
			if err != nil {
				return err
			}
			var n int
			for {
				m, err := s.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return err
				}
				n += len(m.Images)
			}
			if n != 2 {
				return errors.New("stream messages lost")
			}
			return nil
		},
	}
	var want []string
	for _, m := range runtime.ImageService_ServiceDesc.Methods {
		want = append(want, m.MethodName)
	}
	for _, s := range runtime.ImageService_ServiceDesc.Streams {
		want = append(want, s.StreamName)
	}
	for _, method := range want {
		call, ok := calls[method]
		if !ok {
			t.Errorf("the image service has a method %s this test does not call (does the proxy forward it?)", method)
			continue
		}
		if err := call(); err != nil {
			t.Errorf("%s through the proxy: %v", method, err)
		}
	}
	slices.Sort(want)
	got := slices.Sorted(slices.Values(be.calls))
	if !slices.Equal(got, want) {
		t.Errorf("the backend got %v, want one call of each of %v", got, want)
	}

	_, err := c.ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: "missing"}})
	if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "no image named missing" {
		t.Errorf("the backend's error came back as %v", err)
	}
}

// TestPullCredentialsReachTheKeychain: a pull's credentials are forwarded
// to containerd as they were and kept for the image; the authenticator
// follows the image's latest pull; credentials are for their registry
// only; nothing logs them.
func TestPullCredentialsReachTheKeychain(t *testing.T) {
	be, p, c, logs := setup(t)
	ctx := context.Background()
	const image = "registry.example.com:5000/team/app:v1"
	pull := func(image string, auth *runtime.AuthConfig) {
		t.Helper()
		if _, err := c.PullImage(ctx, &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: image}, Auth: auth}); err != nil {
			t.Fatal(err)
		}
	}
	repo, err := name.NewRepository("registry.example.com:5000/team/app")
	if err != nil {
		t.Fatal(err)
	}
	resolve := func(image string, target authn.Resource) *authn.AuthConfig {
		t.Helper()
		a, err := p.store.Keychain(image).Resolve(target)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := a.Authorization()
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}

	if got := resolve(image, repo); *got != (authn.AuthConfig{}) {
		t.Errorf("credentials before any pull: %v", got.Username)
	}
	pull(image, &runtime.AuthConfig{Username: "alice", Password: "alice-Secret-1"})
	if len(be.auths) != 1 || be.auths[0].GetPassword() != "alice-Secret-1" {
		t.Fatalf("containerd did not get the pull's credentials")
	}
	auth, err := p.store.Keychain(image).Resolve(repo)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := auth.Authorization(); got.Username != "alice" || got.Password != "alice-Secret-1" {
		t.Errorf("the image's credentials: user %q", got.Username)
	}
	// The same authenticator follows the next pull (a rotated secret),
	// whichever way the reference was written.
	pull("registry.example.com:5000/team/app:v1", &runtime.AuthConfig{Auth: "Ym9iOmJvYi1TZWNyZXQtMg=="}) // bob:bob-Secret-2
	if got, _ := auth.Authorization(); got.Username != "bob" || got.Password != "bob-Secret-2" {
		t.Errorf("after a pull with other credentials: user %q", got.Username)
	}
	// A pull without credentials keeps the last ones.
	pull(image, nil)
	if got, _ := auth.Authorization(); got.Username != "bob" {
		t.Errorf("after a pull without credentials: user %q", got.Username)
	}
	// Another image, another registry: none.
	if got := resolve("registry.example.com:5000/team/other:v1", repo); got.Username != "" {
		t.Errorf("another image got %q's credentials", got.Username)
	}
	other, _ := name.NewRepository("mirror.example.com/team/app")
	if got := resolve(image, other); got.Username != "" {
		t.Errorf("another registry got %q's credentials", got.Username)
	}
	// Removed: gone for new lookups, the last ones kept by an
	// authenticator in use (a running container's fetches).
	if _, err := c.RemoveImage(ctx, &runtime.RemoveImageRequest{Image: &runtime.ImageSpec{Image: image}}); err != nil {
		t.Fatal(err)
	}
	if got := resolve(image, repo); got.Username != "" {
		t.Errorf("credentials of a removed image: %q", got.Username)
	}
	if got, _ := auth.Authorization(); got.Username != "bob" {
		t.Errorf("an authenticator in use lost its credentials: %q", got.Username)
	}
	if n := p.Counts(); n.Pulls != 3 || n.PullsWithCredentials != 2 || n.Images != 0 {
		t.Errorf("counts %+v", n)
	}

	// ServerAddress scopes credentials to a registry; Docker Hub's
	// historical key matches its images.
	pull("app", &runtime.AuthConfig{Username: "hub", Password: "hub-Secret-3", ServerAddress: "https://index.docker.io/v1/"})
	hub, _ := name.NewRepository("library/app")
	if got := resolve("docker.io/library/app:latest", hub); got.Username != "hub" {
		t.Errorf("Docker Hub credentials for docker.io/library/app: %q", got.Username)
	}
	pull(image, &runtime.AuthConfig{Username: "carol", Password: "carol-Secret-4", ServerAddress: "elsewhere.example.com"})
	if got := resolve(image, repo); got.Username != "" {
		t.Errorf("credentials for elsewhere.example.com were used for %s", repo.RegistryStr())
	}

	if !strings.Contains(logs.String(), `"credentials":true`) {
		t.Errorf("the proxy's debug log does not show the pulls:\n%s", logs)
	}
	for _, secret := range []string{"Secret-1", "Secret-2", "Secret-3", "Secret-4", "Ym9iOmJvYi1TZWNyZXQtMg"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds a secret (%s)", secret)
		}
	}
}
