package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/nbdserver"
	"github.com/sluice-project/sluice/snapshot"
)

// registrySource is the agent's snapshot.Source: it finds an image's
// artifact in its registry (imageconv), serves its flattened image from the
// shared chunk store (blockcache) as an export of the agent's one NBD
// server, named by the artifact digest so that the name survives restarts.
// Streams of one artifact share the export; the last Close removes it.
type registrySource struct {
	ctx       context.Context // the agent's: its logger, lives until the agent stops
	store     *blockcache.Store
	srv       *nbdserver.Server
	socket    string
	keychain  authn.Keychain
	plainHTTP map[string]bool
	imageOpts []blockcache.Option
	memo      artifactMemo
	// closing: the agent stops, and its image mounts stay for the next
	// one, which needs the memos.
	closing atomic.Bool

	mu         sync.Mutex
	exports    map[string]*sourceExport // by key (artifact digest)
	byManifest map[string]string        // manifest digest -> key, while exported
	retired    imageTotals              // counters of images closed since start
}

var _ snapshot.Source = (*registrySource)(nil)

// sourceExport is one artifact being served.
type sourceExport struct {
	key   string
	img   snapshot.ImageRef // the first image that asked for it
	image *blockcache.Image
	refs  int
	memos map[snapshot.ImageRef]bool // images with a memo of this artifact
}

func newRegistrySource(ctx context.Context, store *blockcache.Store, srv *nbdserver.Server, socket, memoDir string,
	keychain authn.Keychain, plainHTTP []string, imageOpts ...blockcache.Option) *registrySource {
	plain := map[string]bool{}
	for _, r := range plainHTTP {
		plain[r] = true
	}
	return &registrySource{
		ctx: ctx, store: store, srv: srv, socket: socket, keychain: keychain,
		plainHTTP: plain, imageOpts: imageOpts, memo: artifactMemo{dir: memoDir},
		exports: map[string]*sourceExport{}, byManifest: map[string]string{},
	}
}

// parse parses an image reference, over plain HTTP when its registry is
// listed in plain_http.
func (s *registrySource) parse(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	if s.plainHTTP[r.Context().RegistryStr()] {
		return name.ParseReference(ref, name.Insecure)
	}
	return r, nil
}

// Resolve finds img's artifact and opens (or shares) its export.
func (s *registrySource) Resolve(ctx context.Context, img snapshot.ImageRef) (snapshot.Stream, error) {
	s.mu.Lock()
	if key, ok := s.byManifest[img.ManifestDigest]; ok {
		e := s.exports[key]
		e.refs++
		s.mu.Unlock()
		return &sourceStream{src: s, e: e}, nil
	}
	s.mu.Unlock()

	ref, err := s.parse(img.Ref)
	if err != nil {
		return nil, snapshot.NotStreamable("bad image reference", err)
	}
	registry := ref.Context().RegistryStr()
	opts := []imageconv.Option{imageconv.WithKeychain(s.keychain)}
	fetchOpts := []blockcache.FetchOption{blockcache.WithKeychain(s.keychain)}
	var nameOpts []name.Option
	if s.plainHTTP[registry] {
		opts = append(opts, imageconv.WithPlainHTTP())
		fetchOpts = append(fetchOpts, blockcache.WithPlainHTTP())
		nameOpts = append(nameOpts, name.Insecure)
	}
	fresh := true
	art, err := imageconv.LookupManifest(ctx, img.Ref, img.ManifestDigest, opts...)
	if err != nil {
		lerr := lookupError(registry, err)
		if snapshot.Reason(lerr) != "registry unreachable" {
			return nil, lerr
		}
		// An image this agent (or the one before) serves: go on with what
		// the registry said then; cached chunks read, the others wait for
		// the registry like any fetch.
		if art, err = s.memo.load(img, nameOpts...); err != nil {
			return nil, lerr
		}
		fresh = false
		zerolog.Ctx(s.ctx).Warn().Err(lerr).Str("image", img.String()).Str("artifact", art.Descriptor.Digest.String()).
			Msg("registry unreachable: serving the image from the artifact looked up before")
	}
	key := art.Descriptor.Digest.String()
	if fresh {
		if err := s.memo.save(img, art); err != nil {
			zerolog.Ctx(s.ctx).Warn().Err(err).Str("image", img.String()).
				Msg("remembering the artifact (a restart while the registry is down cannot adopt this image)")
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.exports[key]
	if !ok {
		// Opening makes no request: it cannot block the lock for long.
		im, err := blockcache.Open(s.ctx, art, s.store, slices.Concat(s.imageOpts, []blockcache.Option{blockcache.WithFetchOptions(fetchOpts...)})...)
		if err == nil {
			if err = s.srv.Add(nbdserver.Export{Name: key, Description: img.String(), Backend: im}); err != nil {
				im.Close()
			}
		}
		if err != nil {
			if fresh {
				s.memo.remove(img)
			}
			return nil, lookupError(registry, err)
		}
		e = &sourceExport{key: key, img: img, image: im, memos: map[snapshot.ImageRef]bool{}}
		s.exports[key] = e
		zerolog.Ctx(s.ctx).Info().Str("image", img.String()).Str("artifact", key).
			Int64("size", art.Index.ImageSize).Int("chunks", len(art.Index.Chunks)).Msg("export opened")
	}
	e.refs++
	e.memos[img] = true
	s.byManifest[img.ManifestDigest] = key
	return &sourceStream{src: s, e: e}, nil
}

// release drops one reference to e; the last one removes the export and
// closes the image. The lock is held throughout so that a Resolve of the
// same artifact cannot find the name still taken.
func (s *registrySource) release(e *sourceExport) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.refs--; e.refs > 0 {
		return nil
	}
	delete(s.exports, e.key)
	for m, k := range s.byManifest {
		if k == e.key {
			delete(s.byManifest, m)
		}
	}
	// The device reading it is detached before its stream closes, so no
	// connection should be left; one that is gets closed.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 30*time.Second)
	defer cancel()
	err := s.srv.Remove(ctx, e.key)
	s.retired.add(e.image.Stats())
	e.image.Close()
	if !s.closing.Load() {
		for img := range e.memos {
			if merr := s.memo.remove(img); merr != nil {
				zerolog.Ctx(s.ctx).Warn().Err(merr).Str("image", img.String()).Msg("removing an artifact memo")
			}
		}
	}
	zerolog.Ctx(s.ctx).Info().Str("image", e.img.String()).Str("artifact", e.key).Msg("export closed")
	return err
}

// pruneMemos removes memos of images not served now, older than maxAge:
// left by images whose mounts a restart found unused, or by failures.
func (s *registrySource) pruneMemos(maxAge time.Duration) {
	s.mu.Lock()
	inUse := map[string]bool{}
	for _, e := range s.exports {
		for img := range e.memos {
			inUse[s.memo.path(img)] = true
		}
	}
	s.mu.Unlock()
	files, _ := filepath.Glob(filepath.Join(s.memo.dir, "*.json"))
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && !inUse[f] && time.Since(fi.ModTime()) > maxAge {
			os.Remove(f)
		}
	}
}

// FetchLayer returns the blob of one of img's layers from its repository.
func (s *registrySource) FetchLayer(ctx context.Context, img snapshot.ImageRef, layerDigest string) (io.ReadCloser, error) {
	ref, err := s.parse(img.Ref)
	if err != nil {
		return nil, err
	}
	l, err := remote.Layer(ref.Context().Digest(layerDigest), remote.WithContext(ctx),
		remote.WithAuthFromKeychain(s.keychain), remote.WithUserAgent("sluiced"))
	if err != nil {
		return nil, fmt.Errorf("layer %s of %s: %w", layerDigest, img, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("layer %s of %s from registry %s: %w", layerDigest, img, ref.Context().RegistryStr(), err)
	}
	return rc, nil
}

// images returns the live images and what they serve, for metrics.
func (s *registrySource) images() (live []liveImage, retired imageTotals) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.exports {
		live = append(live, liveImage{key: e.key, ref: e.img.Ref, image: e.image})
	}
	return live, s.retired
}

type liveImage struct {
	key, ref string
	image    *blockcache.Image
}

// sourceStream is one reference to an export.
type sourceStream struct {
	src  *registrySource
	e    *sourceExport
	once sync.Once
}

func (st *sourceStream) Key() string { return st.e.key }

func (st *sourceStream) Export() snapshot.Export {
	return snapshot.Export{Socket: st.src.socket, Name: st.e.key}
}

func (st *sourceStream) Close() error {
	var err error
	st.once.Do(func() { err = st.src.release(st.e) })
	return err
}

// lookupError classifies a failure to find or open an artifact into the
// reasons the snapshotter counts, naming the registry.
func lookupError(registry string, err error) error {
	var terr *transport.Error
	switch {
	case errors.Is(err, imageconv.ErrNoArtifact):
		return snapshot.NotStreamable("no artifact", err)
	case errors.Is(err, imageconv.ErrBadIndex):
		return snapshot.NotStreamable("artifact index corrupt", err)
	case unreachable(err):
		return snapshot.NotStreamable("registry unreachable", fmt.Errorf("registry %s: %w", registry, err))
	case errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden):
		return snapshot.NotStreamable("registry denied access", fmt.Errorf("registry %s: %w", registry, err))
	case errors.As(err, &terr) && terr.StatusCode >= 500:
		return snapshot.NotStreamable("registry unreachable", fmt.Errorf("registry %s: %w", registry, err))
	}
	return snapshot.NotStreamable("artifact lookup failed", fmt.Errorf("registry %s: %w", registry, err))
}

// unreachable reports network failures: refused, reset, unresolvable,
// timed out.
func unreachable(err error) bool {
	var (
		op  *net.OpError
		dns *net.DNSError
	)
	return errors.As(err, &op) || errors.As(err, &dns) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF)
}
