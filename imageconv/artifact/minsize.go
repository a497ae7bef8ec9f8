package artifact

import (
	"fmt"
	"strconv"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// SmallImageError says that an image's artifacts are all below
// WithMinImageSize's bound. It Is ErrSmallImage.
type SmallImageError struct {
	// Image names the subject, REPOSITORY@DIGEST.
	Image string
	// Size is the largest flattened image size the artifacts declare;
	// Min is the bound.
	Size, Min int64
}

func (e *SmallImageError) Error() string {
	return fmt.Sprintf("%s: flattened image of %d bytes, under the %d bytes worth streaming", e.Image, e.Size, e.Min)
}

func (e *SmallImageError) Is(target error) bool { return target == ErrSmallImage }

// checkSize returns a *SmallImageError when o has a minimum image size and
// every candidate's AnnotationImageSize is below it. The annotations are
// the referrers list's, untrusted: at worst a forged one makes the image
// pull the ordinary way, as it would without sluice.
func (o *options) checkSize(repo name.Repository, subject v1.Hash, cands []v1.Descriptor) error {
	if o.minSize <= 0 {
		return nil
	}
	var largest int64
	for _, c := range cands {
		size, err := strconv.ParseInt(c.Annotations[AnnotationImageSize], 10, 64)
		if err != nil || size >= o.minSize {
			return nil
		}
		largest = max(largest, size)
	}
	return &SmallImageError{Image: repo.String() + "@" + subject.String(), Size: largest, Min: o.minSize}
}
