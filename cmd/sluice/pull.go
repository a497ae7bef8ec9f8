package main

import (
	"context"
	"fmt"
	"os"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"
)

func newPull(g *globals) *cobra.Command {
	var address, namespace, snapshotter, platform string
	cmd := &cobra.Command{
		Use:   "pull [--plain-http] IMAGE",
		Short: "Pull IMAGE through containerd with the snapshot labels CRI sets, so sluiced can stream it",
		Long: `Pull asks containerd to pull and unpack IMAGE into the sluice snapshotter, adding
to each layer the labels a Kubernetes (CRI) pull adds (image reference, manifest
and layer digests). With them sluiced finds the image's artifact and mounts it
instead of downloading its layers; images without one are pulled normally.
Use it on hosts that run containers with ctr or nerdctl rather than
Kubernetes, then e.g. "ctr run --snapshotter sluice IMAGE ID".

Registry credentials come from the docker config and its credential helpers.`,
		Example: `  sluice pull registry.example.com/team/app:v1
  sluice pull --plain-http 127.0.0.1:5000/app:v1 && ctr run --rm --snapshotter sluice 127.0.0.1:5000/app:v1 app`,
		Args: exactArgs(1, "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := namespaces.WithNamespace(cmd.Context(), namespace)
			return pull(ctx, g, address, snapshotter, platform, args[0])
		},
	}
	cmd.Flags().StringVarP(&address, "address", "a", envOr("CONTAINERD_ADDRESS", "/run/containerd/containerd.sock"), "containerd's gRPC socket, as ctr's: $CONTAINERD_ADDRESS if set")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", envOr(namespaces.NamespaceEnvVar, namespaces.Default), "containerd namespace, as ctr's: $CONTAINERD_NAMESPACE if set (CRI's images are in k8s.io)")
	cmd.Flags().StringVar(&snapshotter, "snapshotter", "sluice", "snapshotter to unpack into, as named in containerd's proxy_plugins")
	cmd.Flags().StringVar(&platform, "platform", "", "platform to pull (default: this machine's)")
	return cmd
}

func pull(ctx context.Context, g *globals, address, snapshotter, platform, image string) error {
	var nopts []name.Option
	if g.plainHTTP {
		nopts = append(nopts, name.Insecure)
	}
	ref, err := name.ParseReference(image, nopts...)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", image, err)
	}
	// containerd wants the fully qualified name.
	full := ref.Name()
	client, err := containerd.New(address, containerd.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("connecting to containerd at %s: %w", address, err)
	}
	defer client.Close()
	resolver := docker.NewResolver(docker.ResolverOptions{
		PlainHTTP: g.plainHTTP,
		Authorizer: docker.NewDockerAuthorizer(docker.WithAuthCreds(func(host string) (string, string, error) {
			reg, err := name.NewRegistry(host, nopts...)
			if err != nil {
				return "", "", err
			}
			a, err := authn.DefaultKeychain.Resolve(reg)
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
		containerd.WithPullSnapshotter(snapshotter),
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(full)),
	}
	if platform != "" {
		opts = append(opts, containerd.WithPlatform(platform))
	}
	start := time.Now()
	img, err := client.Pull(ctx, full, opts...)
	if err != nil {
		return fmt.Errorf("pulling %s into snapshotter %s: %w", full, snapshotter, err)
	}
	g.log.Info().Str("image", img.Name()).Str("digest", img.Target().Digest.String()).
		Dur("elapsed", time.Since(start)).Msg("pulled")
	fmt.Printf("%s@%s\n", img.Name(), img.Target().Digest)
	return nil
}

// envOr returns the environment variable key if set, else def: pull's
// defaults follow ctr's and nerdctl's.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
