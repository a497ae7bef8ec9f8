package blockcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// passBackoff spaces out passes over chunks whose background fetch failed;
// after its Attempts passes the rest is left to reads.
var passBackoff = Backoff{Initial: time.Second, Max: time.Minute, Factor: 2, Jitter: 0.2, Attempts: 8}

// prefetch fetches the filesystem's metadata and the profile's chunks,
// unthrottled, then, with a background rate, every other chunk through the
// token bucket. All of it runs at background priority, so reads always go
// first; the pass over every chunk also yields the link while reads fault
// (WithBackgroundQuiet): metadata and the profile are what a starting
// container reads, so they do not wait.
func (im *Image) prefetch(ctx context.Context) {
	defer im.bg.Done()
	log := zerolog.Ctx(ctx).With().Str("artifact", im.art.Descriptor.Digest.String()).Logger()
	ctx = log.WithContext(ctx)
	if im.cfg.metadataFirst {
		im.prefetchMetadata(ctx)
	}
	prof := im.cfg.profile
	if prof == nil && im.cfg.artifactProfile && im.art.Profile != nil {
		p, err := im.fetchProfile(ctx)
		if err != nil {
			log.Warn().Err(err).Msg("ignoring the artifact's profile")
		} else {
			prof = &p
		}
	}
	if prof != nil {
		if prof.ChunkSize != im.ix.ChunkSize {
			log.Warn().Int64("profile_chunk_size", prof.ChunkSize).Int64("chunk_size", im.ix.ChunkSize).Msg("ignoring a profile recorded for another chunk size")
		} else if im.fetchAll(ctx, prof.Chunks, nil) {
			log.Debug().Int("chunks", len(prof.Chunks)).Msg("profile prefetched")
		}
	}
	if im.limiter == nil {
		return
	}
	all := make([]int, len(im.ix.Chunks))
	for i := range all {
		all[i] = i
	}
	if im.fetchAll(ctx, all, im.limiter) {
		im.stats.backgroundDone.Store(true)
		log.Info().Int64("bytes", im.stats.backgroundBytes.Load()).Msg("image fully fetched")
	}
}

// fetchAll fetches the chunks of order that are not cached, in that order,
// coalescing runs adjacent in the data blob, through lim if not nil.
// Failed chunks are retried in later passes; corrupt ones are left to
// reads. Through lim, chunks are fetched at yielding priority (see
// scheduler). It returns whether every chunk was fetched or found cached (a
// corrupt one left to reads counts as done).
func (im *Image) fetchAll(ctx context.Context, order []int, lim *tokenBucket) bool {
	log := zerolog.Ctx(ctx)
	pending := order
	prio := background
	if lim != nil {
		prio = backgroundYielding
	}
	for pass := 0; len(pending) > 0; pass++ {
		if pass == passBackoff.Attempts {
			log.Warn().Int("chunks", len(pending)).Msg("background fetch gave up; reads will fetch what is left")
			return false
		}
		if pass > 0 && sleep(ctx, passBackoff.delay(pass-1)) != nil {
			return false
		}
		var failed []int
		seen := make(map[[32]byte]bool)
		for pos := 0; pos < len(pending); {
			var group []int
			var bytes int64
			group, bytes, pos = im.nextGroup(pending, pos, seen)
			if len(group) == 0 {
				continue
			}
			if lim != nil && lim.wait(ctx, bytes) != nil {
				return false
			}
			if _, _, err := im.loader.load(ctx, group, prio); err != nil {
				if ctx.Err() != nil {
					return false
				}
				if errors.Is(err, ErrChunkCorrupt) {
					log.Warn().Err(err).Msg("background fetch: chunk left to reads")
					continue
				}
				log.Debug().Err(err).Int("pass", pass).Msg("background fetch failed; will retry")
				failed = append(failed, group...)
			}
		}
		pending = failed
	}
	return ctx.Err() == nil
}

// nextGroup returns, from order[pos:], the next run of uncached chunks
// adjacent in the data blob (at most maxRange bytes), their compressed
// size, and where to continue.
func (im *Image) nextGroup(order []int, pos int, seen map[[32]byte]bool) ([]int, int64, int) {
	var group []int
	var start, end int64
	for ; pos < len(order); pos++ {
		i := order[pos]
		if i < 0 || i >= len(im.ix.Chunks) {
			continue
		}
		c := im.ix.Chunks[i]
		if c.Zero() || seen[c.Digest] || im.store.Has(c.Digest) {
			continue
		}
		off, cend := int64(c.Offset), int64(c.Offset)+int64(c.Length)
		if len(group) > 0 && (off != end || cend-start > im.cfg.maxRange) {
			break
		}
		if len(group) == 0 {
			start = off
		}
		seen[c.Digest] = true
		group = append(group, i)
		end = cend
	}
	return group, end - start, pos
}

// fetchProfile fetches and checks the artifact's profile blob.
func (im *Image) fetchProfile(ctx context.Context) (artifact.Profile, error) {
	d := *im.art.Profile
	if limit := artifact.MaxProfileSize(len(im.ix.Chunks)); d.Size <= 0 || d.Size > limit {
		return artifact.Profile{}, fmt.Errorf("profile blob %s: %w: %d bytes for %d chunks", d.Digest, artifact.ErrBadProfile, d.Size, len(im.ix.Chunks))
	}
	ctx, cancel := withTimeout(ctx, im.cfg.readTimeout)
	defer cancel()
	b, err := NewRangeFetcher(im.art.Repo, d, im.cfg.fetchOpts...).FetchRange(ctx, 0, d.Size)
	if err != nil {
		return artifact.Profile{}, err
	}
	if sum := sha256.Sum256(b); d.Digest.Algorithm != "sha256" || hex.EncodeToString(sum[:]) != d.Digest.Hex {
		return artifact.Profile{}, fmt.Errorf("profile blob %s: %w: digest mismatch", d.Digest, artifact.ErrBadProfile)
	}
	p, err := artifact.ParseProfile(b)
	if err != nil {
		return artifact.Profile{}, fmt.Errorf("profile blob %s: %w", d.Digest, err)
	}
	return p, nil
}
