package artifact

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/blockcache/registryhosts"
)

// WithHosts looks the artifact up on these hosts of the image's registry
// (package registryhosts: containerd's hosts.toml), as containerd would:
// manifests by tag on hosts that can resolve, manifests and blobs by
// digest on hosts that can pull, referrers on hosts that can list
// referrers (else those that resolve), each in order, the next whenever
// one fails. No hosts (nil): the registry alone. Signatures are checked
// against the registry itself.
func WithHosts(hosts []registryhosts.Host) Option { return func(o *options) { o.hosts = hosts } }

// onHosts runs op against each host of repo's registry that has the
// capability want, in order, until one succeeds, with the repository's
// name on that host and remote options reaching it; the last host's error
// is op's. With no hosts configured, op runs against repo itself.
func (o *options) onHosts(ctx context.Context, repo name.Repository, want registryhosts.Capabilities, op func(name.Repository, []remote.Option) error) error {
	ropts := o.remoteOptions(ctx)
	var hosts []registryhosts.Host
	for _, h := range o.hosts {
		if h.Capabilities.Has(want) {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		if len(o.hosts) > 0 {
			return fmt.Errorf("no host of %s can %s", repo.RegistryStr(), capName(want))
		}
		return op(repo, ropts)
	}
	var err error
	for i, h := range hosts {
		r := repo
		if h.Mirror {
			r = h.Registry.Repo(repo.RepositoryStr())
		}
		err = op(r, append(ropts, remote.WithTransport(h.Transport)))
		if err == nil || ctx.Err() != nil {
			return err
		}
		if i < len(hosts)-1 {
			zerolog.Ctx(ctx).Debug().Err(err).Str("host", h.URL.Host).Msg("registry host failed; trying the next")
		}
	}
	return err
}

// referrersCapability is what a host needs to be asked for referrers:
// the referrers capability if any host has it, else resolve (containerd's
// rule; the registry itself has every capability unless hosts.toml says
// otherwise).
func (o *options) referrersCapability() registryhosts.Capabilities {
	for _, h := range o.hosts {
		if h.Capabilities.Has(registryhosts.Referrers) {
			return registryhosts.Referrers
		}
	}
	return registryhosts.Resolve
}

func capName(c registryhosts.Capabilities) string {
	switch c {
	case registryhosts.Pull:
		return "pull"
	case registryhosts.Resolve:
		return "resolve"
	case registryhosts.Referrers:
		return "list referrers"
	}
	return fmt.Sprintf("capabilities %b", c)
}
