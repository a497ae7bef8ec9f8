package source

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/blockcache/registryhosts"
	"github.com/sluice-project/sluice/imageconv/artifact"
)

// Exporter publishes open images by name while they are in use: an NBD
// server, for one.
type Exporter interface {
	// Add serves im as the export name, described for humans by
	// description. The name is not in use.
	Add(name, description string, im *blockcache.Image) error
	// Remove stops serving the export name and ends its connections.
	Remove(ctx context.Context, name string) error
}

// Request names an image to open.
type Request struct {
	// Image is the image reference, e.g. registry.example.com/app:v1.
	Image string
	// ManifestDigest is the platform manifest to stream, as containerd's
	// CRI labels give it. "" resolves Image (for a multi-platform image,
	// to the platform of WithPlatform).
	ManifestDigest string
	// Export is the export's name. "" names it by the artifact digest,
	// which stays the same across restarts. Requests for one export name
	// share one open image.
	Export string
}

func (r Request) String() string {
	if r.ManifestDigest == "" {
		return r.Image
	}
	return r.Image + "@" + r.ManifestDigest
}

// Source opens images and shares them; see the package comment. Its
// methods may be called concurrently.
type Source struct {
	ctx      context.Context // New's: its logger; open images live as long as it
	store    *blockcache.Store
	exporter Exporter
	cfg      options
	saved    savedDir
	// shutdown: the process stops and its image mounts stay for the next
	// one, which needs the saved artifacts.
	shutdown atomic.Bool

	mu         sync.Mutex
	open       map[string]*shared // by export name
	byManifest map[string]string  // manifest digest -> export name, while open
	retired    blockcache.Stats   // of images closed since New
	rejected   map[string]uint64  // artifacts not used, by RejectionReason
}

// shared is one open image and its users.
type shared struct {
	name  string
	req   Request // the first request for it
	art   *artifact.Artifact
	image *blockcache.Image
	refs  int
	saved map[string]bool // images (Request.String) with a saved artifact
}

// New makes a Source serving images from store through exporter. ctx
// carries the logger; images opened stay open until closed, whatever
// becomes of ctx.
func New(ctx context.Context, store *blockcache.Store, exporter Exporter, opts ...Option) *Source {
	cfg := options{keychain: authn.DefaultKeychain, plainHTTP: map[string]bool{}}
	for _, o := range opts {
		o(&cfg)
	}
	return &Source{
		ctx: ctx, store: store, exporter: exporter, cfg: cfg, saved: savedDir{dir: cfg.saveDir},
		open: map[string]*shared{}, byManifest: map[string]string{}, rejected: map[string]uint64{},
	}
}

// noteRejected logs and counts the artifacts of req's image that a lookup
// did not use.
func (s *Source) noteRejected(req Request, rs []artifact.Rejection) {
	for _, r := range rs {
		reason := RejectionReason(r.Err)
		zerolog.Ctx(s.ctx).Warn().Err(r.Err).Str("image", req.String()).Str("artifact", r.Descriptor.Digest.String()).
			Str("reason", reason).Msg("artifact not used")
		s.mu.Lock()
		s.rejected[reason]++
		s.mu.Unlock()
	}
}

// Rejected returns how many artifacts lookups did not use since New, by
// RejectionReason.
func (s *Source) Rejected() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.rejected)
}

// Handle is one user's reference to an open image.
type Handle struct {
	s    *Source
	sh   *shared
	once sync.Once
	err  error
}

// Name is the export's name.
func (h *Handle) Name() string { return h.sh.name }

// Artifact is the artifact the image is served from.
func (h *Handle) Artifact() *artifact.Artifact { return h.sh.art }

// Image is the open image.
func (h *Handle) Image() *blockcache.Image { return h.sh.image }

// Close releases the handle; the last one of an image withdraws its export
// and closes it. Closing twice is a no-op.
func (h *Handle) Close() error {
	h.once.Do(func() { h.err = h.s.release(h.sh) })
	return h.err
}

// Open finds req's artifact and opens (or shares) its export. Errors say
// why the image cannot be streamed (see Reason). When the registry cannot
// be reached, an image whose artifact was saved is served from what was
// saved: cached chunks read, the others wait for the registry like any
// fetch.
func (s *Source) Open(ctx context.Context, req Request) (*Handle, error) {
	s.mu.Lock()
	if n, ok := s.byManifest[req.ManifestDigest]; ok && req.ManifestDigest != "" && (req.Export == "" || req.Export == n) {
		sh := s.open[n]
		sh.refs++
		s.mu.Unlock()
		return &Handle{s: s, sh: sh}, nil
	}
	s.mu.Unlock()

	ref, err := s.parse(req.Image)
	if err != nil {
		return nil, err
	}
	art, fresh, err := s.lookup(ctx, ref, req)
	if err != nil {
		return nil, err
	}
	exportName := req.Export
	if exportName == "" {
		exportName = art.Descriptor.Digest.String()
	}
	if fresh {
		if err := s.saved.save(req.String(), art); err != nil {
			zerolog.Ctx(s.ctx).Warn().Err(err).Str("image", req.String()).
				Msg("saving the artifact (a restart while the registry is down cannot adopt this image)")
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	sh, ok := s.open[exportName]
	if !ok {
		// Opening makes no request: it cannot hold the lock for long.
		if sh, err = s.openImage(ref, req, exportName, art); err != nil {
			if fresh {
				s.saved.remove(req.String())
			}
			return nil, fmt.Errorf("opening %s: %w", req, err)
		}
		s.open[exportName] = sh
	}
	sh.refs++
	if s.saved.dir != "" {
		sh.saved[req.String()] = true
	}
	if req.ManifestDigest != "" {
		s.byManifest[req.ManifestDigest] = exportName
	}
	return &Handle{s: s, sh: sh}, nil
}

// lookup asks the registry for req's artifact, or, if it cannot be
// reached, takes the one saved; fresh says which.
func (s *Source) lookup(ctx context.Context, ref name.Reference, req Request) (art *artifact.Artifact, fresh bool, err error) {
	hosts, err := s.hosts(ctx, ref)
	if err != nil {
		return nil, false, err
	}
	opts := []artifact.Option{artifact.WithKeychain(s.keychain(req.Image)), artifact.WithHosts(hosts)}
	if s.plain(ref) {
		opts = append(opts, artifact.WithPlainHTTP())
	}
	if s.cfg.verifier != nil {
		opts = append(opts, artifact.WithVerifier(s.cfg.verifier))
	}
	if s.cfg.minSize > 0 {
		opts = append(opts, artifact.WithMinImageSize(s.cfg.minSize))
	}
	if req.ManifestDigest != "" {
		art, err = artifact.LookupManifest(ctx, req.Image, req.ManifestDigest, opts...)
	} else {
		if s.cfg.platform != nil {
			opts = append(opts, artifact.WithPlatform(*s.cfg.platform))
		}
		art, err = artifact.Lookup(ctx, req.Image, opts...)
	}
	if err == nil {
		s.noteRejected(req, art.Rejected)
		return art, true, nil
	}
	var serr *artifact.SelectionError
	if errors.As(err, &serr) {
		s.noteRejected(req, serr.Rejected)
	}
	if errors.Is(err, artifact.ErrNoArtifact) && s.cfg.converter != nil {
		s.cfg.converter.Request(convertRef(ref, req))
	}
	if !errors.Is(err, artifact.ErrRegistryUnreachable) {
		return nil, false, err
	}
	saved, lerr := s.saved.load(req.String(), s.nameOptions(ref)...)
	if lerr != nil {
		return nil, false, err
	}
	if s.cfg.verifier != nil && !s.cfg.verifier.Accepts(saved.Verdict) {
		// Trusted under another policy or key than now's: the saved
		// verdict does not carry over.
		rej := fmt.Errorf("%w: saved artifact %s was trusted as %q, which the trust policy does not accept", artifact.ErrUntrusted, saved.Descriptor.Digest, saved.Verdict.Policy)
		s.noteRejected(req, []artifact.Rejection{{Descriptor: saved.Descriptor, Err: rej}})
		return nil, false, fmt.Errorf("%w (%w)", rej, err)
	}
	zerolog.Ctx(s.ctx).Warn().Err(err).Str("image", req.String()).Str("artifact", saved.Descriptor.Digest.String()).
		Msg("registry unreachable: serving the image from the artifact looked up before")
	return saved, false, nil
}

// openImage opens art on the store and exports it. Called with s.mu held.
func (s *Source) openImage(ref name.Reference, req Request, exportName string, art *artifact.Artifact) (*shared, error) {
	var fetchOpts []blockcache.FetchOption
	fetchOpts = append(fetchOpts, blockcache.WithKeychain(s.keychain(req.Image)))
	// Read when the image is opened: hosts.toml edits apply to the images
	// opened after them, as in containerd.
	hosts, err := s.hosts(s.ctx, ref)
	if err != nil {
		return nil, err
	}
	fetchOpts = append(fetchOpts, blockcache.WithHosts(hosts))
	if s.plain(ref) {
		fetchOpts = append(fetchOpts, blockcache.WithPlainHTTP())
	}
	im, err := blockcache.Open(s.ctx, art, s.store, slices.Concat(s.cfg.imageOpts, []blockcache.Option{blockcache.WithFetchOptions(fetchOpts...)})...)
	if err != nil {
		return nil, err
	}
	if err := s.exporter.Add(exportName, req.String(), im); err != nil {
		im.Close()
		return nil, err
	}
	zerolog.Ctx(s.ctx).Info().Str("image", req.String()).Str("export", exportName).Str("artifact", art.Descriptor.Digest.String()).
		Int64("size", art.Index.ImageSize).Int("chunks", len(art.Index.Chunks)).Msg("export opened")
	return &shared{name: exportName, req: req, art: art, image: im, saved: map[string]bool{}}, nil
}

// release drops one reference to sh; the last one removes the export and
// closes the image. The lock is held throughout so that an Open of the
// same export cannot find the name still taken.
func (s *Source) release(sh *shared) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh.refs--; sh.refs > 0 {
		return nil
	}
	delete(s.open, sh.name)
	for m, n := range s.byManifest {
		if n == sh.name {
			delete(s.byManifest, m)
		}
	}
	// The device reading it is detached before its handle closes, so no
	// connection should be left; one that is gets closed.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 30*time.Second)
	defer cancel()
	err := s.exporter.Remove(ctx, sh.name)
	s.retired.Add(sh.image.Stats())
	sh.image.Close()
	if !s.shutdown.Load() {
		for image := range sh.saved {
			if serr := s.saved.remove(image); serr != nil {
				zerolog.Ctx(s.ctx).Warn().Err(serr).Str("image", image).Msg("removing a saved artifact")
			}
		}
	}
	zerolog.Ctx(s.ctx).Info().Str("image", sh.req.String()).Str("export", sh.name).Msg("export closed")
	if err != nil {
		return fmt.Errorf("export %s: %w", sh.name, err)
	}
	return nil
}

// Shutdown says the process is stopping while its image mounts stay for
// the next one: from now on closing a handle keeps its image's saved
// artifact, for the next process to adopt the image with.
func (s *Source) Shutdown() { s.shutdown.Store(true) }

// PruneSaved removes saved artifacts of images not open now and older
// than maxAge: left by images whose mounts a restart found unused, or by
// failures.
func (s *Source) PruneSaved(maxAge time.Duration) {
	s.mu.Lock()
	inUse := map[string]bool{}
	for _, sh := range s.open {
		for image := range sh.saved {
			inUse[image] = true
		}
	}
	s.mu.Unlock()
	s.saved.prune(inUse, maxAge)
}

// Live is an open image, for metrics.
type Live struct {
	// Export is the export's name; Image the reference first opened.
	Export, Image string
	Stats         blockcache.Stats
}

// Images returns the open images and the totals of those closed since New
// (so that totals never go down when an image closes).
func (s *Source) Images() (live []Live, retired blockcache.Stats) {
	s.mu.Lock()
	open := make([]*shared, 0, len(s.open))
	for _, sh := range s.open {
		open = append(open, sh)
	}
	retired = s.retired
	s.mu.Unlock()
	for _, sh := range open {
		live = append(live, Live{Export: sh.name, Image: sh.req.Image, Stats: sh.image.Stats()})
	}
	return live, retired
}

// parse parses an image reference, over plain HTTP when its registry is
// one of WithPlainHTTP's.
func (s *Source) parse(image string) (name.Reference, error) {
	ref, err := name.ParseReference(image)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrBadReference, image, err)
	}
	if s.plain(ref) {
		return name.ParseReference(image, name.Insecure)
	}
	return ref, nil
}

func (s *Source) plain(ref name.Reference) bool {
	return s.cfg.plainHTTPAll || s.cfg.plainHTTP[ref.Context().RegistryStr()]
}

func (s *Source) nameOptions(ref name.Reference) []name.Option {
	if s.plain(ref) {
		return []name.Option{name.Insecure}
	}
	return nil
}

// hosts returns the hosts of ref's registry (nil: the registry alone).
func (s *Source) hosts(ctx context.Context, ref name.Reference) ([]registryhosts.Host, error) {
	if s.cfg.hosts == nil {
		return nil, nil
	}
	return s.cfg.hosts.Hosts(ctx, ref.Context().Registry)
}

// Option configures New.
type Option func(*options)

// WithRegistryHosts looks artifacts up and fetches chunks through the
// hosts c configures for each registry (containerd's hosts.toml: mirrors
// in order, then the registry), as the node's containerd pulls. A
// malformed hosts.toml fails the registry's lookups with an error wrapping
// registryhosts.ErrBadConfig (Reason: ReasonHostsConfig).
func WithRegistryHosts(c *registryhosts.Config) Option { return func(o *options) { o.hosts = c } }

type options struct {
	keychain     authn.Keychain
	plainHTTP    map[string]bool
	plainHTTPAll bool
	platform     *v1.Platform
	imageOpts    []blockcache.Option
	saveDir      string
	verifier     artifact.Verifier
	converter    ConvertRequester
	pull         PullCredentials
	hosts        *registryhosts.Config
	minSize      int64
}

// WithStreamMinSize opens no image whose flattened size (as its artifact
// declares it in the referrers list) is under n bytes: Open fails with an
// error that Is artifact.ErrSmallImage (Reason: ReasonSmall) right after
// the referrers answer, so that the image is pulled the ordinary way, which
// is sooner for an image this small than the artifact lookup and attach
// are. 0 (the default) streams every image.
func WithStreamMinSize(n int64) Option { return func(c *options) { c.minSize = n } }

// WithKeychain resolves registry credentials with k (default: the docker
// config and its credential helpers; see Keychain).
func WithKeychain(k authn.Keychain) Option { return func(c *options) { c.keychain = k } }

// PullCredentials are the credentials that came with pulls of an image
// (Kubernetes pull secrets, through package crikeychain).
type PullCredentials interface {
	// Keychain resolves the credentials of image's pulls; Anonymous
	// where it has none.
	Keychain(image string) authn.Keychain
}

// WithPullCredentials tries the credentials pulls of an image came with
// (p) before WithKeychain's, for that image's lookups and fetches.
func WithPullCredentials(p PullCredentials) Option { return func(c *options) { c.pull = p } }

// keychain resolves credentials for image: those its pulls came with,
// then the node's.
func (s *Source) keychain(image string) authn.Keychain {
	if s.cfg.pull == nil {
		return s.cfg.keychain
	}
	return authn.NewMultiKeychain(s.cfg.pull.Keychain(image), s.cfg.keychain)
}

// WithPlainHTTP reaches these registries (host[:port]) over plain HTTP;
// with none given, every registry.
func WithPlainHTTP(registries ...string) Option {
	return func(c *options) {
		if len(registries) == 0 {
			c.plainHTTPAll = true
		}
		for _, r := range registries {
			c.plainHTTP[r] = true
		}
	}
}

// WithPlatform is the platform opened of a multi-platform image named
// without a manifest digest (default: linux on this machine's
// architecture).
func WithPlatform(p v1.Platform) Option { return func(c *options) { c.platform = &p } }

// WithImageOptions configures every image opened (read timeout,
// background rate, ...).
func WithImageOptions(opts ...blockcache.Option) Option {
	return func(c *options) { c.imageOpts = append(c.imageOpts, opts...) }
}

// WithVerifier uses only artifacts v trusts (trust policy "signed"); by
// default an image's one artifact is used, and several are refused as
// ambiguous. A saved artifact is used only if v accepts the verdict it was
// saved with.
func WithVerifier(v artifact.Verifier) Option { return func(c *options) { c.verifier = v } }

// ConvertRequester asks a conversion service to convert an image (package
// imageconv/service/client). Request must not block.
type ConvertRequester interface {
	Request(image string)
}

// WithConvertRequests asks r to convert each image found to have no
// artifact at all (ErrNoArtifact), named REGISTRY/REPOSITORY@DIGEST by
// the manifest asked for (or as requested, without one), so that its next
// pull streams; this pull goes on as it would have.
func WithConvertRequests(r ConvertRequester) Option { return func(c *options) { c.converter = r } }

// convertRef names req's image for a conversion request.
func convertRef(ref name.Reference, req Request) string {
	if req.ManifestDigest != "" {
		return ref.Context().Name() + "@" + req.ManifestDigest
	}
	return ref.Name()
}

// WithSaveDir keeps each open image's artifact in dir, for when the
// registry is down (see the package comment).
func WithSaveDir(dir string) Option { return func(c *options) { c.saveDir = dir } }
