package main

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/blockcache/source"
	"github.com/sluice-project/sluice/cmd/internal/cliutil"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
	"github.com/sluice-project/sluice/imageconv/service"
)

type convertServiceFlags struct {
	listen, signKey, repos, registries, workDir, stateDir, maxImageSize string
	platforms, chunkSize, credentials                                   string
	maxParallel, maxQueue                                               int
	jobTimeout                                                          time.Duration
}

func newConvertService(g *globals) *cobra.Command {
	return convertServiceCommand(g, &convertServiceFlags{})
}

// convertServiceCommand is the command, its flags parsed into f.
func convertServiceCommand(g *globals, f *convertServiceFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "convert-service [--plain-http] --listen ADDR [--sign-key FILE] [--repos PATTERN,...] [--work-dir DIR] [--max-parallel N]",
		Short: "Convert images as they are pushed (registry notifications) or first pulled (node requests)",
		Long: `convert-service converts images without any change to CI: a registry sends it
a notification of each push (POST /events, distribution's notifications
envelope, as docker-registry sends from notifications.endpoints), and node
agents whose pull fell back for want of an artifact ask for it (POST /convert,
{"image": "REGISTRY/REPOSITORY@sha256:..."}; sluiced's convert_service).

Each image manifest or index of a repository matching --repos is queued once
(by REGISTRY/REPOSITORY@DIGEST), converted unless it has an artifact already
(with --sign-key: one signed with that key), pushed next to the image and
signed. Artifacts, signatures and other manifests that are not images are
skipped. The queue is kept in --state-dir, one file per job: jobs queued or
running when the service stops or crashes run again at the next start.
At most --max-parallel conversions run at once; an image whose layers'
compressed plus uncompressed bytes pass --max-image-size is refused, so the
work dir needs about 2 x max-parallel x max-image-size.

GET /healthz and GET /metrics (Prometheus) are served on the same address.
Registry credentials: --credentials-file (docker config format), then the
docker config and its credential helpers. Stop with Ctrl-C or SIGTERM.`,
		Example: `  sluice convert-service --listen :8080 --sign-key /etc/sluice/convert.key --repos 'team/*'
  # registry config (docker-registry, distribution):
  #   notifications:
  #     endpoints:
  #       - name: sluice
  #         url: http://sluice-convert:8080/events`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := f.options(g)
			if err != nil {
				return err
			}
			ctx := g.log.WithContext(cmd.Context())
			l, err := net.Listen("tcp", f.listen)
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			defer l.Close()
			svc, err := service.New(ctx, f.stateDir, f.workDir, opts...)
			if err != nil {
				return err
			}
			defer svc.Close()
			g.log.Info().Str("listen", l.Addr().String()).Msg("serving /events, /convert, /healthz, /metrics")
			return svc.Serve(ctx, l)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "", "address to serve the HTTP API on, e.g. :8080 (required)")
	fl.StringVar(&f.signKey, "sign-key", "", "sign each artifact with this private key (cosign format, password from $COSIGN_PASSWORD); an image counts as converted only with an artifact signed by it")
	fl.StringVar(&f.repos, "repos", "", "convert only repositories matching one of these patterns, e.g. 'team/*,apps/**' ('*' within a path component, '/**' anything below; a pattern may start with the registry host); default every repository")
	fl.StringVar(&f.registries, "registries", "", "convert only from these registries (host[:port],...), whatever a request names (default: any)")
	fl.StringVar(&f.workDir, "work-dir", os.TempDir(), "directory for the conversions' temporary files (the service's own subdirectory is emptied at start)")
	fl.StringVar(&f.stateDir, "state-dir", "/var/lib/sluice-convert", "directory of the persistent queue, one file per job (one service per directory: it is locked)")
	fl.IntVar(&f.maxParallel, "max-parallel", service.DefaultMaxParallel, "conversions running at once")
	fl.IntVar(&f.maxQueue, "max-queue", service.DefaultMaxQueue, "jobs queued and running at most; more are refused (503)")
	fl.StringVar(&f.maxImageSize, "max-image-size", cliutil.FormatSizeExact(service.DefaultMaxImageSize), "refuse images whose layers' compressed plus uncompressed bytes pass this")
	fl.StringVar(&f.platforms, "platform", "", "convert only these platforms, e.g. linux/amd64,linux/arm64 (default: all)")
	fl.StringVar(&f.chunkSize, "chunk-size", cliutil.FormatSizeExact(artifact.DefaultChunkSize), "chunk size of the artifacts")
	fl.StringVar(&f.credentials, "credentials-file", "", "registry credentials in docker config format ({\"auths\": {...}}), tried first; read at each request")
	fl.DurationVar(&f.jobTimeout, "job-timeout", service.DefaultJobTimeout, "bound of one conversion")
	_ = cmd.MarkFlagRequired("listen")
	return cmd
}

// options turns the flags into the service's options.
func (f *convertServiceFlags) options(g *globals) ([]service.Option, error) {
	opts := []service.Option{
		service.WithMaxParallel(f.maxParallel),
		service.WithMaxQueue(f.maxQueue),
		service.WithJobTimeout(f.jobTimeout),
		service.WithKeychain(source.Keychain(f.credentials)),
	}
	if g.plainHTTP {
		opts = append(opts, service.WithPlainHTTP())
	}
	if f.signKey != "" {
		key, err := signature.LoadPrivateKey(f.signKey)
		if err != nil {
			return nil, fmt.Errorf("--sign-key: %w", err)
		}
		opts = append(opts, service.WithSignKey(key))
	}
	if f.repos != "" {
		opts = append(opts, service.WithRepos(splitList(f.repos)...))
	}
	if f.registries != "" {
		opts = append(opts, service.WithRegistries(splitList(f.registries)...))
	}
	n, err := cliutil.ParseSize(f.maxImageSize)
	if err != nil {
		return nil, fmt.Errorf("--max-image-size: %w", err)
	}
	opts = append(opts, service.WithMaxImageSize(n))
	cs, err := cliutil.ParseSize(f.chunkSize)
	if err != nil {
		return nil, fmt.Errorf("--chunk-size: %w", err)
	}
	opts = append(opts, service.WithChunkSize(cs))
	if f.platforms != "" {
		ps, err := artifact.ParsePlatforms(f.platforms)
		if err != nil {
			return nil, fmt.Errorf("--platform: %w", err)
		}
		opts = append(opts, service.WithPlatforms(ps...))
	}
	if f.credentials != "" {
		if _, err := source.CheckCredentialsFile(f.credentials); err != nil {
			return nil, fmt.Errorf("--credentials-file: %w", err)
		}
	}
	return opts, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
