package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/test/testenv"
)

// Sample is one cold run of one image in one mode.
type Sample struct {
	Image      string    `json:"image"`
	Mode       Mode      `json:"mode"`
	State      NodeState `json:"node_state"`
	Containerd string    `json:"containerd"`
	Link       string    `json:"link"`
	Run        int       `json:"run"`
	// Ready is from the PullImage call to the time containerd stamped on
	// the ready line; Pull, Create and Start are the CRI calls' own times,
	// and AfterStart is from StartContainer's return to the ready line.
	Ready      time.Duration `json:"ready_ns"`
	Pull       time.Duration `json:"pull_ns"`
	Create     time.Duration `json:"create_ns"`
	Start      time.Duration `json:"start_ns"`
	AfterStart time.Duration `json:"after_start_ns"`
	// BeforeReady is what went through the link from the pull to the
	// ready line; Total is the same once sluiced's background fetch ended
	// (nil if it did not end in time).
	BeforeReady traffic  `json:"before_ready"`
	Total       *traffic `json:"total,omitempty"`
	// AgentFetched and AgentBackground are sluiced's own counters at the
	// ready line (sluice_fetched_bytes_total and its background part),
	// since the clock started.
	AgentFetched    int64 `json:"agent_fetched_bytes,omitempty"`
	AgentBackground int64 `json:"agent_background_bytes,omitempty"`
	// AgentRead is what the node read through sluiced's devices from the
	// pull to the ready line (sluice_read_bytes_total: the container's
	// reads, the kernel's readahead, mount and probe reads; uncompressed).
	AgentRead int64 `json:"agent_read_bytes,omitempty"`
	// AgentFallbacks counts the images sluiced had containerd pull the
	// ordinary way during the run (sluice_fallbacks_total): an image under
	// stream_min_size, for one.
	AgentFallbacks int64 `json:"agent_fallbacks,omitempty"`
	// Complete is from the ready line to the image being complete in
	// sluiced's cache.
	Complete time.Duration `json:"complete_ns,omitempty"`
	Err      string        `json:"error,omitempty"`
}

// point is where in the matrix a sample is taken.
type point struct {
	image   *benchImage
	mode    Mode
	state   NodeState
	version testenv.ContainerdVersion
	link    *throttle
	run     int
}

// sample runs one cold start on a new node and measures it; a failure is
// recorded in the sample, with the ends of the daemons' logs.
func (b *bench) sample(ctx context.Context, pt point) Sample {
	s := Sample{Image: pt.image.recipe.Name, Mode: pt.mode, State: pt.state, Containerd: pt.version.String(),
		Link: pt.link.link.Name, Run: pt.run}
	b.seq++
	dir := filepath.Join(b.cfg.WorkDir, fmt.Sprintf("node-%03d", b.seq))
	log := zerolog.Ctx(ctx).With().Str("image", s.Image).Str("mode", string(s.Mode)).Str("node", string(s.State)).
		Str("containerd", s.Containerd).Str("link", s.Link).Int("run", s.Run).Logger()
	n, err := startNode(ctx, b, dir, pt.mode, pt.version, pt.link.addr)
	if err != nil {
		s.Err = err.Error()
		log.Error().Err(err).Msg("node did not start")
		return s
	}
	defer func() {
		if err := n.close(ctx); err != nil {
			log.Error().Err(err).Msg("node cleanup")
		}
	}()
	if err := b.measure(ctx, n, pt, &s); err != nil {
		s.Err = fmt.Sprintf("%v\n%s", err, n.logTails())
		log.Error().Err(err).Msg("run failed")
		return s
	}
	log.Info().Dur("ready", s.Ready).Dur("pull", s.Pull).Int64("bytes_before_ready", s.BeforeReady.Bytes).
		Int64("requests_before_ready", s.BeforeReady.Requests).Msg("run done")
	return s
}

// measure runs the pod (and, on a SharedBase node, the image sharing the
// base to its ready line and complete), drops the page cache, then pulls,
// creates and starts the container and waits for its ready line; in the
// lazy modes it then waits for the background fetch to end.
func (b *bench) measure(ctx context.Context, n *node, pt point, s *Sample) error {
	p, err := n.cri.runPod(ctx, "bench", filepath.Join(n.dir, "logs"))
	if err != nil {
		return err
	}
	target := pt.image.plain
	if pt.state == SharedBase {
		if err := b.warm(ctx, n, p, pt); err != nil {
			return err
		}
		target = *pt.image.app
	}
	if b.cfg.DropCaches {
		if err := dropCaches(); err != nil {
			return err
		}
	}
	th := pt.link
	before, err := th.stats(ctx)
	if err != nil {
		return err
	}
	var agentBefore metrics
	if n.agent != nil {
		if agentBefore, err = n.agent.metrics(ctx); err != nil {
			return err
		}
	}
	ref := th.addr + "/" + target.repo
	t0 := time.Now()
	if err := n.cri.pull(ctx, p, ref); err != nil {
		return err
	}
	t1 := time.Now()
	id, logPath, err := n.cri.create(ctx, p, "app", ref, pt.image.recipe.Command)
	if err != nil {
		return err
	}
	t2 := time.Now()
	if err := n.cri.start(ctx, id); err != nil {
		return err
	}
	t3 := time.Now()
	readyAt, err := waitReady(ctx, n.cri, id, logPath, b.cfg.ReadyTimeout)
	if err != nil {
		return err
	}
	atReady, err := th.stats(ctx)
	if err != nil {
		return err
	}
	s.Pull, s.Create, s.Start = t1.Sub(t0), t2.Sub(t1), t3.Sub(t2)
	s.Ready, s.AfterStart = readyAt.Sub(t0), readyAt.Sub(t3)
	s.BeforeReady = atReady.since(before, target.layers)
	if n.agent == nil {
		total := s.BeforeReady
		s.Total = &total
		return nil
	}
	m, err := n.agent.metrics(ctx)
	if err != nil {
		return err
	}
	s.AgentFetched = int64(m.sum("sluice_fetched_bytes_total") - agentBefore.sum("sluice_fetched_bytes_total"))
	s.AgentBackground = int64(m.sum("sluice_background_fetched_bytes_total") - agentBefore.sum("sluice_background_fetched_bytes_total"))
	s.AgentRead = int64(m.sum("sluice_read_bytes_total") - agentBefore.sum("sluice_read_bytes_total"))
	s.AgentFallbacks = int64(m.sum("sluice_fallbacks_total") - agentBefore.sum("sluice_fallbacks_total"))
	if pt.mode == NoBackground && s.AgentFallbacks == 0 {
		// Nothing fetches what the container did not read: the total
		// stays unknown.
		return nil
	}
	if err := n.agent.waitComplete(ctx, b.cfg.BackgroundTimeout); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("image", s.Image).Msg("total bytes unknown")
		return nil
	}
	s.Complete = time.Since(readyAt)
	end, err := th.stats(ctx)
	if err != nil {
		return err
	}
	total := end.since(before, target.layers)
	s.Total = &total
	return nil
}

// warm runs the image sharing pt's base (its "other" variant) in pod p to
// its ready line and, on a lazy node, until sluiced has all of it.
func (b *bench) warm(ctx context.Context, n *node, p *pod, pt point) error {
	ref := pt.link.addr + "/" + pt.image.other.repo
	if err := n.cri.pull(ctx, p, ref); err != nil {
		return fmt.Errorf("warming the node: %w", err)
	}
	id, logPath, err := n.cri.create(ctx, p, "warm", ref, pt.image.recipe.Command)
	if err != nil {
		return fmt.Errorf("warming the node: %w", err)
	}
	if err := n.cri.start(ctx, id); err != nil {
		return fmt.Errorf("warming the node: %w", err)
	}
	if _, err := waitReady(ctx, n.cri, id, logPath, b.cfg.ReadyTimeout); err != nil {
		return fmt.Errorf("warming the node: %w", err)
	}
	if n.agent != nil {
		if err := n.agent.waitComplete(ctx, b.cfg.BackgroundTimeout); err != nil {
			return fmt.Errorf("warming the node: %w", err)
		}
	}
	return nil
}

// dropCaches writes dirty pages back and drops the page cache, dentries and
// inodes, so that the run reads binaries and images from disk.
func dropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return fmt.Errorf("dropping the page cache (needs root): %w", err)
	}
	return nil
}
