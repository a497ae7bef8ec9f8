package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/imageconv/artifact"
)

// Outcomes of a job, and their reasons (see the package comment).
const (
	outcomeConverted = "converted"
	outcomeExpanded  = "expanded"
	outcomeSkipped   = "skipped"
	outcomeRefused   = "refused"
	outcomeFailed    = "failed"

	reasonNone        = ""
	reasonPlatforms   = "platform manifests queued"
	reasonAlready     = "already converted"
	reasonNotImage    = "not an image"
	reasonPlatform    = "platform not wanted"
	reasonTooLarge    = "too large"
	reasonNotFound    = "not found"
	reasonBadRef      = "bad reference"
	reasonDenied      = "registry denied access"
	reasonBadImage    = "bad image"
	reasonUnreachable = "registry unreachable"
	reasonTimeout     = "timed out"
	reasonFailed      = "conversion failed"
)

// outcome is what became of one run of a job.
type outcome struct {
	outcome, reason string
	err             error
	retry           bool // the registry failed: run the job again later
	result          *imageconv.Result
	queued          int // platform manifests an index queued
}

// run runs job j and records its outcome: done, to be retried, or (when
// ctx ends) left queued for the next start.
func (s *Service) run(ctx context.Context, j *job) {
	log := zerolog.Ctx(s.ctx).With().Str("image", j.Key).Str("origin", j.Origin).Logger()
	jctx, cancel := context.WithTimeout(ctx, s.o.jobTimeout)
	defer cancel()
	start := time.Now()
	out := s.process(jctx, j)
	if ctx.Err() != nil {
		s.queue.release(j)
		log.Info().Msg("stopping: the job stays queued for the next start")
		return
	}
	if out.retry && j.Attempts+1 < s.o.attempts {
		delay := s.o.retryDelay << j.Attempts
		if err := s.queue.retry(j, delay); err != nil {
			log.Error().Err(err).Msg("queueing a retry")
		}
		s.metrics.retries.Inc()
		log.Warn().Err(out.err).Str("reason", out.reason).Int("attempt", j.Attempts).Dur("retry_in", delay).Msg("conversion will be retried")
		return
	}
	// The outcome is counted and logged before the job leaves the queue:
	// whoever sees the queue idle (a test, /healthz) sees the outcome too.
	s.metrics.conversions.WithLabelValues(out.outcome, out.reason).Inc()
	switch out.outcome {
	case outcomeConverted:
		r := out.result
		s.metrics.seconds.Observe(time.Since(start).Seconds())
		s.metrics.bytesIn.Add(float64(r.Summary.SourceCompressed))
		s.metrics.bytesOut.Add(float64(r.Summary.ArtifactSize))
		ev := log.Info().Str("manifest", r.Source.Digest.String()).Str("artifact", r.Artifact.String()).
			Int64("source_bytes", r.Summary.SourceCompressed).Int64("artifact_bytes", r.Summary.ArtifactSize).
			Dur("elapsed", time.Since(start))
		if r.Signature != (v1.Hash{}) {
			ev = ev.Str("signature", r.Signature.String())
		}
		ev.Msg("converted")
	case outcomeExpanded:
		log.Info().Int("platforms", out.queued).Msg("index: its platform manifests are queued")
	case outcomeSkipped:
		log.Info().Str("reason", out.reason).Msg("skipped")
	case outcomeRefused:
		log.Warn().Err(out.err).Str("reason", out.reason).Msg("refused")
	default:
		log.Error().Err(out.err).Str("reason", out.reason).Int("attempts", j.Attempts+1).Msg("conversion failed")
	}
	if err := s.queue.finish(j); err != nil {
		log.Error().Err(err).Msg("removing the finished job from the queue (it runs again at the next start)")
	}
}

// registry are the options reaching registries: plain HTTP, credentials,
// the service's user agent.
func (s *Service) registry() []artifact.Option {
	opts := []artifact.Option{artifact.WithKeychain(s.o.keychain), artifact.WithRemoteOptions(remote.WithUserAgent(userAgent))}
	if s.o.plainHTTP {
		opts = append(opts, artifact.WithPlainHTTP())
	}
	return opts
}

// process runs job j once.
func (s *Service) process(ctx context.Context, j *job) outcome {
	ref, err := artifact.ParseReference(j.Key, s.registry()...)
	if err != nil {
		return outcome{outcome: outcomeRefused, reason: reasonBadRef, err: err}
	}
	desc, err := remote.Get(ref, artifact.RemoteOptions(ctx, s.registry()...)...)
	if err != nil {
		return failure(ctx, fmt.Errorf("fetching %s: %w", ref, err))
	}
	repo := ref.Context()
	switch {
	case desc.MediaType.IsIndex():
		return s.expand(ctx, repo, desc)
	case !desc.MediaType.IsImage():
		return outcome{outcome: outcomeSkipped, reason: reasonNotImage, err: fmt.Errorf("media type %s", desc.MediaType)}
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return outcome{outcome: outcomeRefused, reason: reasonBadImage, err: err}
	}
	if (m.Config.MediaType != types.DockerConfigJSON && m.Config.MediaType != types.OCIConfigJSON) || m.ArtifactType != "" {
		// A sluice artifact, a signature, a Helm chart...
		return outcome{outcome: outcomeSkipped, reason: reasonNotImage, err: fmt.Errorf("config media type %s", m.Config.MediaType)}
	}
	var compressed int64
	for _, l := range m.Layers {
		compressed += l.Size
	}
	if compressed > s.o.maxSource {
		return outcome{outcome: outcomeRefused, reason: reasonTooLarge,
			err: fmt.Errorf("%w: %d bytes of compressed layers, more than the bound of %d", imageconv.ErrTooLarge, compressed, s.o.maxSource)}
	}
	if len(s.o.platforms) > 0 {
		if out, ok := s.wanted(desc); !ok {
			return out
		}
	}
	digestRef := repo.Digest(desc.Digest.String())
	has, err := s.converted(ctx, digestRef)
	if err != nil {
		return failure(ctx, err)
	}
	if has {
		return outcome{outcome: outcomeSkipped, reason: reasonAlready}
	}
	return s.convert(ctx, j, digestRef)
}

// wanted checks an image's platform against WithPlatforms.
func (s *Service) wanted(desc *remote.Descriptor) (outcome, bool) {
	img, err := desc.Image()
	if err != nil {
		return failure(context.Background(), err), false
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return failure(context.Background(), fmt.Errorf("reading the image config: %w", err)), false
	}
	if p := cf.Platform(); p == nil || !artifact.MatchesAny(*p, s.o.platforms) {
		return outcome{outcome: outcomeSkipped, reason: reasonPlatform, err: fmt.Errorf("platform %v", p)}, false
	}
	return outcome{}, true
}

// expand queues a job per platform manifest of an index.
func (s *Service) expand(ctx context.Context, repo name.Repository, desc *remote.Descriptor) outcome {
	im, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return outcome{outcome: outcomeRefused, reason: reasonBadImage, err: err}
	}
	var ms []v1.Descriptor
	for _, m := range artifact.PlatformManifests(im, s.o.platforms) {
		// Some tools give an image's descriptor its config's media type
		// as artifact type.
		switch types.MediaType(m.ArtifactType) {
		case "", types.DockerConfigJSON, types.OCIConfigJSON:
			ms = append(ms, m)
		}
	}
	if len(ms) == 0 {
		// Such as the index of a manifest's referrers (the tag schema's).
		return outcome{outcome: outcomeSkipped, reason: reasonNotImage, err: errors.New("an index of no image manifest for the platforms wanted")}
	}
	for _, m := range ms {
		if _, err := s.enqueue(repo.RegistryStr()+"/"+repo.RepositoryStr()+"@"+m.Digest.String(), "index"); err != nil {
			return outcome{outcome: outcomeFailed, reason: reasonFailed, err: err}
		}
	}
	return outcome{outcome: outcomeExpanded, reason: reasonPlatforms, queued: len(ms)}
}

// converted reports whether the image manifest ref has an artifact
// already: one signed with the service's key, when it has one; any,
// when not. An error is the registry's.
func (s *Service) converted(ctx context.Context, ref name.Digest) (bool, error) {
	if s.verifier != nil {
		_, err := artifact.LookupManifest(ctx, ref.String(), ref.DigestStr(), append(s.registry(), artifact.WithVerifier(s.verifier))...)
		switch {
		case err == nil, errors.Is(err, artifact.ErrSeveralTrusted):
			return true, nil
		case errors.Is(err, artifact.ErrRegistryUnreachable), errors.Is(err, artifact.ErrRegistryDenied):
			return false, err
		}
		// None, none signed with the key, a corrupt one: convert.
		return false, nil
	}
	h, err := v1.NewHash(ref.DigestStr())
	if err != nil {
		return false, err
	}
	cs, err := artifact.Candidates(ctx, ref.Context(), h, s.registry()...)
	if errors.Is(err, artifact.ErrRegistryUnreachable) || errors.Is(err, artifact.ErrRegistryDenied) {
		return false, err
	}
	for _, c := range cs {
		if c.Subject == h {
			return true, nil
		}
	}
	return false, nil
}

// convert converts the image manifest ref in a work dir of its own, and
// pushes (and signs) its artifact.
func (s *Service) convert(ctx context.Context, j *job, ref name.Digest) outcome {
	sum := sha256.Sum256([]byte(j.Key))
	dir := filepath.Join(s.workDir, hex.EncodeToString(sum[:8]))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return outcome{outcome: outcomeFailed, reason: reasonFailed, err: fmt.Errorf("work dir: %w", err)}
	}
	defer os.RemoveAll(dir)
	opts := []imageconv.Option{
		imageconv.WithWorkDir(dir),
		imageconv.WithChunkSize(s.o.chunkSize),
		imageconv.WithMaxSourceSize(s.o.maxSource),
		imageconv.WithKeychain(s.o.keychain),
		imageconv.WithRemoteOptions(remote.WithUserAgent(userAgent)),
	}
	if s.o.plainHTTP {
		opts = append(opts, imageconv.WithPlainHTTP())
	}
	if s.o.signKey != nil {
		opts = append(opts, imageconv.WithSignKey(s.o.signKey))
	}
	rs, err := imageconv.Convert(ctx, ref.String(), opts...)
	if err != nil {
		return failure(ctx, err)
	}
	return outcome{outcome: outcomeConverted, result: &rs[0]}
}

// failure classifies a job's error.
func failure(ctx context.Context, err error) outcome {
	var terr *transport.Error
	status := 0
	if errors.As(err, &terr) {
		status = terr.StatusCode
	}
	probe := &artifact.RegistryError{Err: err}
	switch {
	case errors.Is(err, imageconv.ErrTooLarge):
		return outcome{outcome: outcomeRefused, reason: reasonTooLarge, err: err}
	case status == 404:
		return outcome{outcome: outcomeRefused, reason: reasonNotFound, err: err}
	case errors.Is(err, artifact.ErrRegistryDenied) || probe.Is(artifact.ErrRegistryDenied):
		return outcome{outcome: outcomeRefused, reason: reasonDenied, err: err}
	case errors.Is(err, imageconv.ErrLayerDigest), errors.Is(err, imageconv.ErrUnsafeEntry):
		return outcome{outcome: outcomeRefused, reason: reasonBadImage, err: err}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return outcome{outcome: outcomeFailed, reason: reasonTimeout, err: err}
	case errors.Is(err, artifact.ErrRegistryUnreachable) || probe.Is(artifact.ErrRegistryUnreachable):
		return outcome{outcome: outcomeFailed, reason: reasonUnreachable, err: err, retry: true}
	}
	return outcome{outcome: outcomeFailed, reason: reasonFailed, err: err}
}
