package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/snapshot/pull"
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
			return pullImage(ctx, g, address, snapshotter, platform, args[0])
		},
	}
	cmd.Flags().StringVarP(&address, "address", "a", envOr("CONTAINERD_ADDRESS", "/run/containerd/containerd.sock"), "containerd's gRPC socket, as ctr's: $CONTAINERD_ADDRESS if set")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", envOr(namespaces.NamespaceEnvVar, namespaces.Default), "containerd namespace, as ctr's: $CONTAINERD_NAMESPACE if set (CRI's images are in k8s.io)")
	cmd.Flags().StringVar(&snapshotter, "snapshotter", "sluice", "snapshotter to unpack into, as named in containerd's proxy_plugins")
	cmd.Flags().StringVar(&platform, "platform", "", "platform to pull (default: this machine's)")
	return cmd
}

func pullImage(ctx context.Context, g *globals, address, snapshotter, platform, image string) error {
	start := time.Now()
	name, digest, err := pull.Image(ctx, image, pull.Options{
		Address: address, Snapshotter: snapshotter, Platform: platform, PlainHTTP: g.plainHTTP,
	})
	if err != nil {
		return err
	}
	g.log.Info().Str("image", name).Str("digest", digest).Dur("elapsed", time.Since(start)).Msg("pulled")
	fmt.Printf("%s@%s\n", name, digest)
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
