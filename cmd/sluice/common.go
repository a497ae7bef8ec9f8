package main

import (
	"fmt"

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
		ps, err := artifact.ParsePlatforms(platform)
		if err != nil || len(ps) != 1 {
			return nil, fmt.Errorf("--platform: want one os/arch[/variant], got %q", platform)
		}
		opts = append(opts, artifact.WithPlatform(ps[0]))
	}
	return opts, nil
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
