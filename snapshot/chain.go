package snapshot

import (
	"context"

	"github.com/containerd/containerd/v2/core/snapshots/storage"
)

// link is one committed snapshot of a parent chain.
type link struct {
	id, name string
	labels   map[string]string
}

// parentChain returns parent and its ancestors, parent first.
func (s *Snapshotter) parentChain(ctx context.Context, parent string) (chain []link, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		for name := parent; name != ""; {
			id, info, _, err := storage.GetInfo(ctx, name)
			if err != nil {
				return err
			}
			chain = append(chain, link{id: id, name: name, labels: info.Labels})
			name = info.Parent
		}
		return nil
	})
	return chain, err
}

// lowerDirsOf returns the lower directories, topmost first, of a snapshot
// whose parent is parent (none for ""): each ordinary snapshot's fs
// directory down to the first image placeholder, which contributes its
// image mount and ends the list. Layer placeholders on the way are
// materialized first, image mounts mounted if they are not.
func (s *Snapshotter) lowerDirsOf(ctx context.Context, parent string) ([]string, error) {
	if parent == "" {
		return nil, nil
	}
	chain, err := s.parentChain(ctx, parent)
	if err != nil {
		return nil, err
	}
	return s.lowerDirs(ctx, chain)
}

func (s *Snapshotter) lowerDirs(ctx context.Context, chain []link) ([]string, error) {
	var dirs []string
	for i, l := range chain {
		p, ok := placeholderOf(l.labels)
		switch {
		case !ok || p.materialized:
			dirs = append(dirs, s.upperPath(l.id))
		case p.image:
			mnt, err := s.ensureImage(ctx, p.key, p.img)
			if err != nil {
				return nil, err
			}
			return append(dirs, mnt), nil
		default:
			below, err := s.lowerDirs(ctx, chain[i+1:])
			if err != nil {
				return nil, err
			}
			if err := s.materialize(ctx, l, p, below); err != nil {
				return nil, err
			}
			dirs = append(dirs, s.upperPath(l.id))
			return append(dirs, below...), nil
		}
	}
	return dirs, nil
}
