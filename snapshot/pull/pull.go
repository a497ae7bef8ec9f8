// Package pull pulls images through containerd the way a Kubernetes (CRI)
// pull does for the snapshotter: each layer's unpack carries the labels
// CRI sets (image reference, manifest and layer digests), which the sluice
// snapshotter needs to find an image's artifact and stream it. It is for
// hosts that run containers with ctr or nerdctl rather than Kubernetes.
package pull

import (
	"context"
	"fmt"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Options say where and how to pull.
type Options struct {
	// Address is containerd's gRPC socket.
	Address string
	// Snapshotter is the snapshotter to unpack into, as containerd names it.
	Snapshotter string
	// Platform is the platform to pull; "" is containerd's default (this
	// machine's).
	Platform string
	// PlainHTTP reaches the registry over plain HTTP.
	PlainHTTP bool
	// Keychain resolves registry credentials (default: the docker config
	// and its credential helpers).
	Keychain authn.Keychain
}

// Image pulls and unpacks image into o.Snapshotter in the namespace of
// ctx, and returns the image's fully qualified name and manifest digest.
func Image(ctx context.Context, image string, o Options) (fullName, digest string, err error) {
	var nopts []name.Option
	if o.PlainHTTP {
		nopts = append(nopts, name.Insecure)
	}
	if o.Keychain == nil {
		o.Keychain = authn.DefaultKeychain
	}
	ref, err := name.ParseReference(image, nopts...)
	if err != nil {
		return "", "", fmt.Errorf("image reference %q: %w", image, err)
	}
	// containerd wants the fully qualified name.
	full := ref.Name()
	client, err := containerd.New(o.Address, containerd.WithTimeout(10*time.Second))
	if err != nil {
		return "", "", fmt.Errorf("connecting to containerd at %s: %w", o.Address, err)
	}
	defer client.Close()
	resolver := docker.NewResolver(docker.ResolverOptions{
		PlainHTTP: o.PlainHTTP,
		Authorizer: docker.NewDockerAuthorizer(docker.WithAuthCreds(func(host string) (string, string, error) {
			reg, err := name.NewRegistry(host, nopts...)
			if err != nil {
				return "", "", err
			}
			a, err := o.Keychain.Resolve(reg)
			if err != nil {
				return "", "", err
			}
			cfg, err := a.Authorization()
			if err != nil {
				return "", "", err
			}
			if cfg.IdentityToken != "" {
				return "", cfg.IdentityToken, nil
			}
			return cfg.Username, cfg.Password, nil
		})),
	})
	opts := []containerd.RemoteOpt{
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(o.Snapshotter),
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(full)),
	}
	if o.Platform != "" {
		opts = append(opts, containerd.WithPlatform(o.Platform))
	}
	img, err := client.Pull(ctx, full, opts...)
	if err != nil {
		return "", "", fmt.Errorf("pulling %s into snapshotter %s: %w", full, o.Snapshotter, err)
	}
	return img.Name(), img.Target().Digest.String(), nil
}
