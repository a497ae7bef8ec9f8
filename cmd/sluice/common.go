package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/imageconv"
)

func commonOptions(g *globals, platforms string) ([]imageconv.Option, error) {
	var opts []imageconv.Option
	if g.plainHTTP {
		opts = append(opts, imageconv.WithPlainHTTP())
	}
	if platforms != "" {
		ps, err := imageconv.ParsePlatforms(platforms)
		if err != nil {
			return nil, fmt.Errorf("--platform: %w", err)
		}
		opts = append(opts, imageconv.WithPlatforms(ps...))
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
