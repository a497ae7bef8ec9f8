package main

import (
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

func newSign(g *globals) *cobra.Command {
	var key, platform, pick string
	cmd := &cobra.Command{
		Use:   "sign [--plain-http] --key FILE [--artifact DIGEST] IMAGE",
		Short: "Sign IMAGE's sluice artifact, for nodes that trust only signed artifacts",
		Long: `Sign signs the sluice artifact of IMAGE with a private key and stores the
signature in IMAGE's repository, as a referrer of the artifact: a sigstore
bundle (application/vnd.dev.sigstore.bundle.v0.3+json) over the artifact
manifest's digest, which covers its index, its data and its subject. Nodes
with trust.policy = "signed" and the public key in trust.keys then use it.

Sign only artifacts you vouch for: "sluice verify IMAGE" reconverts IMAGE
and says whether its artifacts are what IMAGE converts to. If IMAGE has
several artifacts, name the one to sign with --artifact.

The key is in cosign's format (cosign generate-key-pair; its password from
$COSIGN_PASSWORD), or a plain PEM EC P-256 key.`,
		Example: `  COSIGN_PASSWORD=... sluice sign --key cosign.key registry.example.com/team/app:v1
  sluice sign --key ci.key --artifact sha256:1f2e... registry.example.com/team/app:v1`,
		Args: exactArgs(1, "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			k, err := signature.LoadPrivateKey(key)
			if err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			opts, err := lookupOptions(g, platform)
			if err != nil {
				return err
			}
			if pick != "" {
				h, err := v1.NewHash(pick)
				if err != nil {
					return fmt.Errorf("--artifact: %w", err)
				}
				opts = append(opts, artifact.WithVerifier(artifact.Pinned(h)))
			}
			a, err := artifact.Lookup(ctx, args[0], opts...)
			if errors.Is(err, artifact.ErrAmbiguous) {
				return fmt.Errorf("%w; name the one to sign with --artifact (sluice verify %s says which are %s's)", err, args[0], args[0])
			}
			if err != nil {
				return err
			}
			sig, err := signature.Sign(ctx, a.Repo, a.Descriptor, k, opts...)
			if err != nil {
				return err
			}
			fmt.Printf("signed %s@%s\n  signature %s\n  key %s\n", a.Repo, a.Descriptor.Digest, sig.Digest, k.Public().ID())
			return nil
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "private key to sign with (required)")
	cmd.Flags().StringVar(&pick, "artifact", "", "digest of the artifact to sign, when IMAGE has several")
	cmd.Flags().StringVar(&platform, "platform", "", "platform of a multi-platform IMAGE (default: this machine's, linux/ARCH)")
	_ = cmd.MarkFlagRequired("key")
	return cmd
}
