package main

import (
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/imageconv/artifact"
)

// convertOptions are imageconv's options for the global flags and
// --platform (a list).
func convertOptions(g *globals, platforms string) ([]imageconv.Option, error) {
	var opts []imageconv.Option
	if g.plainHTTP {
		opts = append(opts, imageconv.WithPlainHTTP())
	}
	if platforms != "" {
		ps, err := artifact.ParsePlatforms(platforms)
		if err != nil {
			return nil, fmt.Errorf("--platform: %w", err)
		}
		opts = append(opts, imageconv.WithPlatforms(ps...))
	}
	return opts, nil
}

// lookupOptions are artifact.Lookup's options for the global flags and
// --platform (one).
func lookupOptions(g *globals, platform string) ([]artifact.Option, error) {
	var opts []artifact.Option
	if g.plainHTTP {
		opts = append(opts, artifact.WithPlainHTTP())
	}
	if platform != "" {
		p, err := onePlatform(platform)
		if err != nil {
			return nil, err
		}
		opts = append(opts, artifact.WithPlatform(p))
	}
	return opts, nil
}

// onePlatform parses a --platform that names one platform.
func onePlatform(s string) (v1.Platform, error) {
	ps, err := artifact.ParsePlatforms(s)
	if err != nil || len(ps) != 1 {
		return v1.Platform{}, fmt.Errorf("--platform: want one os/arch[/variant], got %q", s)
	}
	return ps[0], nil
}

// exactArgs is cobra.ExactArgs with a message that names the arguments.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s needs %s (got %d arguments); see %s --help", cmd.CommandPath(), names, len(args), cmd.CommandPath())
		}
		return nil
	}
}
