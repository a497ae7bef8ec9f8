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
	var hosts []int // indexes in o.hosts
	for i, h := range o.hosts {
		if h.Capabilities.Has(want) {
			hosts = append(hosts, i)
		}
	}
	if len(hosts) == 0 {
		if len(o.hosts) > 0 {
			return fmt.Errorf("no host of %s can %s", repo.RegistryStr(), capName(want))
		}
		return op(repo, o.reuse(-1, ropts))
	}
	var err error
	for i, hi := range hosts {
		h := o.hosts[hi]
		r := repo
		if h.Mirror {
			r = h.Registry.Repo(repo.RepositoryStr())
		}
		err = op(r, o.reuse(hi, append(ropts, remote.WithTransport(h.Transport))))
		if err == nil || ctx.Err() != nil {
			return err
		}
		if i < len(hosts)-1 {
			zerolog.Ctx(ctx).Debug().Err(err).Str("host", h.URL.Host).Msg("registry host failed; trying the next")
		}
	}
	return err
}

// reuse adds to ropts, the remote options reaching host (an index in
// o.hosts; -1: the registry alone), one go-containerregistry Puller per
// host for the life of o (one lookup), so that the lookup's requests in a
// repository share one ping and token instead of a round trip more each.
func (o *options) reuse(host int, ropts []remote.Option) []remote.Option {
	o.pullersMu.Lock()
	defer o.pullersMu.Unlock()
	p, ok := o.pullers[host]
	if !ok {
		var err error
		if p, err = remote.NewPuller(ropts...); err != nil {
			return ropts // the call itself reports the bad option
		}
		if o.pullers == nil {
			o.pullers = map[int]*remote.Puller{}
		}
		o.pullers[host] = p
	}
	return append(ropts[:len(ropts):len(ropts)], remote.Reuse(p))
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
