package harness

import (
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sluice-project/sluice/test/testenv"
)

// sandboxRef is the pod sandbox (pause) image, imported into each node:
// there is no registry.k8s.io here, and the sandbox is not what is
// measured.
const sandboxRef = "sluice.bench/pause:v1"

// writeSandbox writes the sandbox image, whose entrypoint sleeps, as a
// docker archive for ctr import.
func writeSandbox(path string) error {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return fmt.Errorf("sandbox image: busybox-static (scripts/install-deps.sh installs it): %w", err)
	}
	l := testenv.NewImageBuilder().Layer()
	for _, d := range []string{"bin", "proc", "sys", "dev", "etc"} {
		l.Dir(d, meta(0o755))
	}
	l.File("bin/busybox", bb, meta(0o755))
	l.Symlink("bin/sleep", "busybox", meta(0o777))
	img, err := imageOfLayer(l, v1.Config{Entrypoint: []string{"/bin/sleep", "2147483647"}})
	if err != nil {
		return fmt.Errorf("sandbox image: %w", err)
	}
	tag, err := name.NewTag(sandboxRef)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, img)
}
