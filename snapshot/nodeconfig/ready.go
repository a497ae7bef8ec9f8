package nodeconfig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/sluice-project/sluice/snapshot/nodeconfig/tomledit"
)

// DefaultContainerdAddress is containerd's gRPC socket when its config
// names none.
const DefaultContainerdAddress = "/run/containerd/containerd.sock"

// ContainerdAddress returns the gRPC socket containerd's config src names:
// [grpc] address (versions 2, 3), or the gRPC server plugin's (version 4).
func ContainerdAddress(src []byte) (string, error) {
	d, err := tomledit.Parse(src)
	if err != nil {
		return "", err
	}
	for _, k := range []tomledit.Key{
		{"plugins", "io.containerd.server.v1.grpc", "address"},
		{"grpc", "address"},
	} {
		if a, ok := mustString(d.Get(k)); ok && a != "" {
			return a, nil
		}
	}
	return DefaultContainerdAddress, nil
}

var (
	// ErrNotReady is a daemon that did not answer in time.
	ErrNotReady = errors.New("not ready")
	// ErrNoSnapshotter is a containerd that answers without the sluice
	// snapshotter.
	ErrNoSnapshotter = errors.New("containerd has no snapshotter " + Plugin)
)

// WaitSluiced waits until sluiced accepts connections on its snapshotter
// socket and, if metricsAddress is set, answers /healthz with 200.
func WaitSluiced(ctx context.Context, socket, metricsAddress string) error {
	return poll(ctx, "sluiced", func(ctx context.Context) error {
		var dialer net.Dialer
		conn, err := dialer.DialContext(ctx, "unix", socket)
		if err != nil {
			return err
		}
		conn.Close()
		if metricsAddress == "" {
			return nil
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddress+"/healthz", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/healthz on %s: %s", metricsAddress, resp.Status)
		}
		return nil
	})
}

// WaitContainerd waits until containerd answers on address and has loaded
// the snapshotter sluice (its proxy plugin). A containerd that answers
// without it was not restarted since its config changed, or its config
// does not name sluice: that is reported as soon as it answers.
func WaitContainerd(ctx context.Context, address string) error {
	var missing error
	err := poll(ctx, "containerd", func(ctx context.Context) error {
		c, err := containerd.New(address, containerd.WithTimeout(2*time.Second))
		if err != nil {
			return err
		}
		defer c.Close()
		resp, err := c.IntrospectionService().Plugins(ctx, "type==io.containerd.snapshotter.v1,id=="+Plugin)
		if err != nil {
			return err
		}
		if len(resp.Plugins) == 0 {
			missing = fmt.Errorf("%w: containerd on %s answers without it: restart containerd after its config changed, "+
				"and check that the config it reads names [proxy_plugins.%s]", ErrNoSnapshotter, address, Plugin)
			return nil
		}
		if ie := resp.Plugins[0].InitErr; ie != nil {
			missing = fmt.Errorf("%w: containerd on %s did not load it: %s", ErrNoSnapshotter, address, ie.Message)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return missing
}

// poll calls check every 200 ms until it succeeds or ctx ends; the error
// then names what and the last failure.
func poll(ctx context.Context, what string, check func(context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := check(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %w: %v", what, ErrNotReady, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
