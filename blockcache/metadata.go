package blockcache

import (
	"context"
	"errors"
	"slices"

	"github.com/rs/zerolog"
)

// tableRead bounds the bytes of an inode table read at once while looking
// for directories.
const tableRead = 1 << 20

// prefetchMetadata fetches the chunks of the ext4 metadata of the image, at
// background priority without waiting for the quiet window: first the
// superblock and group descriptors (the image's first chunks, a round trip
// before the rest is known), then the bitmaps and inode tables, then the
// blocks of the directories the inode tables list. Each step coalesces its
// chunks into ranges; images converted by sluice keep their directories,
// inode tables and bitmaps together at the end, so that is a few range
// requests. An image whose layout this cannot read is logged and skipped.
//
// Why from the filesystem and not from marks in the index: every artifact
// already pushed gains it, with no new index field (readers reject the
// index flags they do not know, so a mark would break older agents), and
// the converter's own edits of the ext4 image after tar2ext4 need no
// tracking. The cost is the first round trip, for chunk 0, which is
// metadata anyway.
func (im *Image) prefetchMetadata(ctx context.Context) {
	log := zerolog.Ctx(ctx)
	size := im.ix.ImageSize
	sb, err := im.readBackground(ctx, sbOffset, sbSize)
	if err != nil {
		log.Debug().Err(err).Msg("filesystem metadata not prefetched: reading the superblock failed")
		return
	}
	l, err := superblock(sb, size)
	if err == nil {
		var gdt []byte
		if gdt, err = im.readBackground(ctx, l.gdtOff, l.gdtLen); err == nil {
			err = l.groups(gdt, size)
		}
	}
	if err != nil {
		if errors.Is(err, errNoExt4) {
			log.Warn().Err(err).Msg("filesystem metadata not prefetched: the image's superblock is not one sluice reads")
		} else if ctx.Err() == nil {
			log.Debug().Err(err).Msg("filesystem metadata not prefetched")
		}
		return
	}
	if !im.fetchRanges(ctx, l.meta) {
		return
	}
	var dirs [][2]int64
	skipped := 0
	for g, t := range l.tables {
		for off := t[0]; off < t[1]; off += tableRead {
			b, err := im.readBackground(ctx, off, min(tableRead, t[1]-off))
			if err != nil {
				log.Debug().Err(err).Msg("directories not prefetched: reading an inode table failed")
				return
			}
			var n int
			first := int64(g)*l.inodesPerGroup + (off-t[0])/l.inodeSize + 1
			dirs, n = l.dirBlocks(b, first, size, dirs)
			skipped += n
		}
	}
	if im.fetchRanges(ctx, dirs) {
		log.Debug().Int64("chunks", im.stats.metadataChunks.Load()).Int("directories_not_followed", skipped).Msg("filesystem metadata prefetched")
	}
}

// fetchRanges fetches, at background priority, the chunks holding the
// byte ranges rs of the image, in image order, and counts them as
// metadata; false if ctx ended.
func (im *Image) fetchRanges(ctx context.Context, rs [][2]int64) bool {
	cs := im.ix.ChunkSize
	var idxs []int
	for _, r := range rs {
		if r[1] <= r[0] {
			continue
		}
		for i := r[0] / cs; i <= (r[1]-1)/cs; i++ {
			idxs = append(idxs, int(i))
		}
	}
	slices.Sort(idxs)
	idxs = slices.Compact(idxs)
	for _, i := range idxs {
		if !im.ix.Chunks[i].Zero() {
			im.stats.metadataChunks.Add(1)
		}
	}
	im.fetchAll(ctx, idxs, nil)
	return ctx.Err() == nil
}

// readBackground reads the n bytes at off (within the image) through the
// loader at background priority.
func (im *Image) readBackground(ctx context.Context, off, n int64) ([]byte, error) {
	first, last := im.chunkRange(off, int(n))
	idxs := make([]int, 0, last-first+1)
	for i := first; i <= last; i++ {
		idxs = append(idxs, i)
	}
	rctx, cancel := withTimeout(ctx, im.cfg.readTimeout)
	defer cancel()
	data, _, err := im.loader.load(rctx, idxs, background)
	if err != nil {
		return nil, err
	}
	out := make([]byte, n)
	for k, i := range idxs {
		sp := im.span(i, off, int(n))
		if data[k] != nil {
			copy(out[sp.lo-off:sp.hi-off], data[k][sp.lo-sp.start:sp.hi-sp.start])
		}
	}
	return out, nil
}
