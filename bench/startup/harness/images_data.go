package harness

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"

	"github.com/sluice-project/sluice/test/testenv"
)

// The data image: busybox plus a layer of pseudo-random (incompressible)
// files, of which the app reads one.
const (
	// dataReadFile is the file the app reads, dataReadBytes long.
	dataReadFile  = "data/model.bin"
	dataReadBytes = 20_000_000
	// dataFillFiles files of dataFillBytes each that the app never reads
	// make the image about 2 GiB.
	dataFillFiles = 32
	dataFillBytes = 64 << 20
	// dataVersion is part of the data image's key: bump it when the data
	// layer changes.
	dataVersion = "d1"
)

// dataCommand reads dataReadFile whole (md5sum reads every byte) before
// the ready line.
var dataCommand = []string{"/bin/sh", "-c", "md5sum /" + dataReadFile + " >/dev/null && echo " + ReadyLine + " && exec sleep 600"}

func dataKey(ctx context.Context, b *builder) (string, error) {
	k, err := busyboxKey(ctx, b)
	if err != nil {
		return "", err
	}
	return k + "-" + dataVersion, nil
}

// buildData makes the data image: the busybox layer, then the data layer,
// written (gzip, fastest level: the data does not compress) to a file in
// the cache first so that 2 GiB never sit in memory.
func buildData(ctx context.Context, b *builder) (v1.Image, error) {
	base := testenv.NewImageBuilder().Layer()
	if err := busyboxLayer(base); err != nil {
		return nil, err
	}
	bbImg, err := imageOfLayer(base, v1.Config{})
	if err != nil {
		return nil, err
	}
	bbLayers, err := bbImg.Layers()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(b.scratchDir(), "data-layer-"+dataVersion+".tar.gz")
	if err := writeDataLayer(ctx, path, dataLayout{dataFillFiles, dataFillBytes, dataReadBytes}); err != nil {
		return nil, fmt.Errorf("data layer %s: %w", path, err)
	}
	layer, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := newImage(v1.Config{Cmd: []string{"/bin/sh"}}, append(bbLayers, layer)...)
	if err != nil {
		return nil, err
	}
	return img, nil
}

// dataLayout is the data layer's shape: fill files of fillBytes each and
// the read file of readBytes.
type dataLayout struct {
	fill                 int
	fillBytes, readBytes int64
}

// writeDataLayer writes the data layer's tar.gz to path, whole or not at
// all. The bytes come from a seeded ChaCha8 stream, so every build makes
// the same layer.
func writeDataLayer(ctx context.Context, path string, d dataLayout) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	defer os.Remove(path + ".tmp")
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	rng := rand.NewChaCha8([32]byte{'s', 'l', 'u', 'i', 'c', 'e', '-', 'b', 'e', 'n', 'c', 'h'})
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: fixedTime, Format: tar.FormatPAX})
	}
	file := func(name string, size int64) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: fixedTime, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := io.CopyN(tw, rng, size)
		return err
	}
	if err := dir("data"); err != nil {
		return err
	}
	if err := dir("data/unread"); err != nil {
		return err
	}
	// Half the unread files before the one the app reads, half after: it
	// sits in the middle of the flattened image, as an app's file would.
	for i := range d.fill {
		if i == d.fill/2 {
			if err := file(dataReadFile, d.readBytes); err != nil {
				return err
			}
		}
		if err := file(fmt.Sprintf("data/unread/%02d.bin", i), d.fillBytes); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}
