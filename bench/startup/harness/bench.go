package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/test/testenv"
)

// bench is one run of the matrix.
type bench struct {
	cfg     Config
	sandbox string // docker archive of the sandbox image
	seq     int    // nodes started so far
}

// benchImage is a recipe's image pushed to the registry and converted,
// with its two variants for the SharedBase node state.
type benchImage struct {
	recipe Recipe
	plain  pushedImage
	// app is the image plus a small layer of its own, measured on a
	// SharedBase node after other (the image plus another small layer)
	// ran; nil unless SharedBase is measured.
	app, other *pushedImage
	Info       ImageInfo
}

// pushedImage is an image in the registry, with a sluice artifact.
type pushedImage struct {
	repo     string   // REPO:TAG, on the registry and through the proxy
	layers   []string // layer blob digests
	size     int64    // of the layer blobs
	digest   string   // manifest digest
	artifact string   // the sluice artifact's manifest digest
}

// ImageInfo describes an image in the report.
type ImageInfo struct {
	Name       string   `json:"name"`
	About      string   `json:"about"`
	Command    []string `json:"command"`
	Layers     int      `json:"layers"`
	LayerBytes int64    `json:"layer_bytes"` // compressed, as pulled
	Digest     string   `json:"digest"`
	Artifact   string   `json:"artifact"` // the sluice artifact's manifest digest
	Cache      string   `json:"cache"`    // the OCI layout it was pushed from
}

// Tools returns the commands a run of these images needs in PATH (it
// needs root too): the registry, containerd 1.6 and runc, nbdfuse and the
// loop device tools of sluiced's portable attach, and what the recipes
// build images with.
func Tools(images []string) []string {
	tools := []string{testenv.RegistryBinary, "containerd", "ctr", "runc", "containerd-shim-runc-v2",
		"nbdfuse", "losetup", "fusermount3", "busybox", "bash"}
	for _, nm := range images {
		if r, ok := recipeByName(nm); ok {
			for _, t := range r.tools {
				if !slices.Contains(tools, t) {
					tools = append(tools, t)
				}
			}
		}
	}
	return tools
}

// Run measures every image, mode, containerd version and link of cfg, with
// cfg.Runs cold runs each, and returns the report. A run that fails is
// recorded in its sample (Sample.Err); Run fails only when the bench
// cannot be set up.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	log := zerolog.Ctx(ctx)
	rep := &Report{Started: time.Now().UTC(), Config: cfg.summary(), AgentConfig: cfg.AgentFields + fmt.Sprintf(AgentConfig, "NODE_DIR/sluiced", "127.0.0.1:PROXY_PORT", "127.0.0.1:FREE_PORT")}
	var err error
	if rep.Machine, err = describeMachine(ctx, cfg); err != nil {
		return nil, err
	}
	b := &bench{cfg: cfg, sandbox: filepath.Join(cfg.WorkDir, "sandbox.tar")}
	if err := writeSandbox(b.sandbox); err != nil {
		return nil, err
	}
	defer os.Remove(b.sandbox)
	reg, err := testenv.StartRegistry(filepath.Join(cfg.WorkDir, "registry"))
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	defer func() {
		reg.Stop()
		os.RemoveAll(filepath.Join(cfg.WorkDir, "registry"))
	}()
	images, err := b.prepareImages(ctx, reg.Addr)
	if err != nil {
		return nil, err
	}
	for _, im := range images {
		rep.Images = append(rep.Images, im.Info)
	}
	prog := newProgress(cfg)
	log.Info().Int("runs", prog.total).Msg("runs to do (each a new node; the log gives the time left as runs end)")
	for _, link := range cfg.Links {
		if !slices.ContainsFunc(images, func(im *benchImage) bool { return cfg.measures(im.recipe.Name, link.Name) }) {
			continue
		}
		th, err := startThrottle(ctx, cfg.Binaries.ThrottleProxy, filepath.Join(cfg.WorkDir, "proxy-"+link.Name), reg.Addr, link)
		if err != nil {
			return nil, err
		}
		log.Info().Str("link", link.Name).Str("proxy", th.addr).Msg("measuring through the throttle proxy")
		for _, im := range images {
			if !cfg.measures(im.recipe.Name, link.Name) {
				continue
			}
			for _, v := range cfg.Containerds {
				// Modes interleave within each run, so that drift in the
				// machine's load spreads over all of them.
				for run := 1; run <= cfg.Runs; run++ {
					for _, mode := range cfg.Modes {
						if ctx.Err() != nil {
							th.stop()
							return nil, ctx.Err()
						}
						for _, st := range cfg.States {
							if !cfg.planned(im.recipe.Name, mode, st, v) {
								continue
							}
							rep.Samples = append(rep.Samples, b.sample(ctx, point{im, mode, st, v, th, run}))
							prog.done(ctx)
						}
					}
				}
			}
		}
		th.stop()
		os.RemoveAll(filepath.Join(cfg.WorkDir, "proxy-"+link.Name))
	}
	rep.Targets = CheckTargets(Rows(rep.Samples))
	rep.Finished = time.Now().UTC()
	rep.Machine.LoadAfter = loadAverage()
	return rep, nil
}

// prepareImages builds (or takes from the cache) each image, pushes it to
// the registry at addr and converts it with sluice convert.
func (b *bench) prepareImages(ctx context.Context, addr string) ([]*benchImage, error) {
	bl := &builder{cacheDir: filepath.Join(b.cfg.CacheDir, "startup"), repoRoot: b.cfg.RepoRoot, baseDir: b.cfg.CacheDir}
	var out []*benchImage
	for _, nm := range b.cfg.Images {
		r, _ := recipeByName(nm)
		img, cache, err := bl.image(ctx, r)
		if err != nil {
			return nil, err
		}
		im := &benchImage{recipe: r}
		if im.plain, err = b.push(ctx, addr, "bench/"+r.Name+":v1", img); err != nil {
			return nil, err
		}
		im.Info = ImageInfo{Name: r.Name, About: r.About, Command: r.Command, Cache: cache,
			Layers: len(im.plain.layers), LayerBytes: im.plain.size, Digest: im.plain.digest, Artifact: im.plain.artifact}
		if slices.Contains(b.cfg.States, SharedBase) && (b.cfg.SharedBaseImages == nil || slices.Contains(b.cfg.SharedBaseImages, r.Name)) {
			for _, v := range []struct {
				p    **pushedImage
				name string
			}{{&im.app, "app"}, {&im.other, "other"}} {
				vimg, err := withTopLayer(img, v.name)
				if err != nil {
					return nil, fmt.Errorf("image %s-%s: %w", r.Name, v.name, err)
				}
				pushed, err := b.push(ctx, addr, "bench/"+r.Name+"-"+v.name+":v1", vimg)
				if err != nil {
					return nil, err
				}
				*v.p = &pushed
			}
		}
		zerolog.Ctx(ctx).Info().Str("image", r.Name).Str("artifact", im.Info.Artifact).
			Int64("layer_bytes", im.Info.LayerBytes).Msg("image pushed and converted")
		out = append(out, im)
	}
	return out, nil
}

// push pushes img to the registry at addr as repo (REPO:TAG) and converts
// it.
func (b *bench) push(ctx context.Context, addr, repo string, img v1.Image) (pushedImage, error) {
	p := pushedImage{repo: repo}
	m, err := img.Manifest()
	if err != nil {
		return p, fmt.Errorf("image %s: %w", repo, err)
	}
	for _, l := range m.Layers {
		p.layers = append(p.layers, l.Digest.String())
		p.size += l.Size
	}
	d, err := img.Digest()
	if err != nil {
		return p, fmt.Errorf("image %s: %w", repo, err)
	}
	p.digest = d.String()
	ref, err := name.ParseReference(addr+"/"+repo, name.Insecure)
	if err != nil {
		return p, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return p, fmt.Errorf("pushing %s: %w", ref, err)
	}
	if p.artifact, err = convert(ctx, b.cfg.Binaries.Sluice, ref.String()); err != nil {
		return p, err
	}
	return p, nil
}

var artifactDigest = regexp.MustCompile(`@(sha256:[0-9a-f]{64})`)

// convert runs sluice convert on ref, as a user would, and returns the
// artifact's manifest digest it prints.
func convert(ctx context.Context, bin, ref string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "convert", "--plain-http", ref).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("sluice convert %s: %w\n%s", ref, err, out)
	}
	m := artifactDigest.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("sluice convert %s printed no artifact digest:\n%s", ref, out)
	}
	return string(m[1]), nil
}

// ConfigSummary is the settings of a run, for the report.
type ConfigSummary struct {
	Images      []string    `json:"images"`
	Modes       []Mode      `json:"modes"`
	States      []NodeState `json:"states"`
	Containerds []string    `json:"containerds"`
	Links       []Link      `json:"links"`
	// ImageLinks: the links each image was measured on, when not every one.
	ImageLinks map[string][]string `json:"image_links,omitempty"`
	Runs       int                 `json:"runs"`
	DropCaches bool                `json:"drop_caches"`
	// SharedBaseImages and DetailContainerds: Config's, when it narrows
	// the matrix.
	SharedBaseImages  []string `json:"shared_base_images,omitempty"`
	DetailContainerds []string `json:"detail_containerds,omitempty"`
}

func (c Config) summary() ConfigSummary {
	s := ConfigSummary{Images: c.Images, Modes: c.Modes, States: c.States, Links: c.Links, ImageLinks: c.ImageLinks, Runs: c.Runs, DropCaches: c.DropCaches}
	for _, v := range c.Containerds {
		s.Containerds = append(s.Containerds, v.String())
	}
	s.SharedBaseImages = c.SharedBaseImages
	for _, v := range c.DetailContainerds {
		s.DetailContainerds = append(s.DetailContainerds, v.String())
	}
	return s
}
