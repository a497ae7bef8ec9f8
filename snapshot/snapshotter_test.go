package snapshot

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestSnapshotterSuite runs containerd's snapshotter test suite against the
// ordinary (overlayfs) path. The suite is told the snapshotter is
// "overlayfs" because its one overlay-specific case applies: renaming a
// directory of a lower layer fails with EXDEV without redirect_dir, which
// sluice leaves off, as containerd's overlay snapshotter does, because
// containerd's diff of an upper directory does not understand redirects.
func TestSnapshotterSuite(t *testing.T) {
	testutil.Require(t, testutil.Root) // mounts overlayfs
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		s, err := New(ctx, root, nil, nil)
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	})
}
