package main

import (
	"fmt"
	"time"

	"github.com/sluice-project/sluice/snapshot"
)

// KernelConfig is the [kernel] table: the kernel nbd attacher (used when
// attacher is "kernel", or "auto" where the nbd driver works).
type KernelConfig struct {
	// Connections is the number of sockets (NBD connections) per device,
	// 1 to 8; 0 means the number of CPUs, at most 8. Default 0.
	Connections int `toml:"connections"`
	// Timeout: a block request unanswered this long is sent again (on
	// another connection). Longer than cache.read_timeout, so that a slow
	// read gets its EIO answer instead. Default "60s".
	Timeout string `toml:"timeout"`
	// DeadConnTimeout is how long reads wait for a restarted agent when
	// every connection of a device is gone; after it they fail with EIO,
	// and the next agent gives new containers a new device. Default "2m".
	DeadConnTimeout string `toml:"dead_conn_timeout"`
	// NBDsMax is the nbds_max the nbd module is loaded with when sluiced
	// loads it (devices made in advance; more are added when needed).
	// Default 16.
	NBDsMax int `toml:"nbds_max"`

	timeout, deadConnTimeout time.Duration
}

func defaultKernelConfig() KernelConfig {
	return KernelConfig{
		Timeout:         snapshot.DefaultKernelTimeout.String(),
		DeadConnTimeout: snapshot.DefaultKernelDeadConnTimeout.String(),
		NBDsMax:         snapshot.DefaultKernelNBDsMax,
	}
}

func (k *KernelConfig) validate() error {
	if k.Connections < 0 || k.Connections > snapshot.MaxKernelConnections {
		return fmt.Errorf("kernel.connections: want 0 (one per CPU) to %d, got %d", snapshot.MaxKernelConnections, k.Connections)
	}
	var err error
	if k.timeout, err = time.ParseDuration(k.Timeout); err != nil || k.timeout < time.Second {
		return fmt.Errorf("kernel.timeout: want a duration of at least 1s such as \"60s\", got %q", k.Timeout)
	}
	if k.deadConnTimeout, err = time.ParseDuration(k.DeadConnTimeout); err != nil || k.deadConnTimeout < time.Second {
		return fmt.Errorf("kernel.dead_conn_timeout: want a duration of at least 1s such as \"2m\", got %q", k.DeadConnTimeout)
	}
	if k.NBDsMax < 1 || k.NBDsMax > 1024 {
		return fmt.Errorf("kernel.nbds_max: want 1 to 1024, got %d", k.NBDsMax)
	}
	return nil
}

// options are the kernel attacher's options the table sets.
func (k *KernelConfig) options() []snapshot.KernelOpt {
	opts := []snapshot.KernelOpt{
		snapshot.KernelTimeouts(k.timeout, k.deadConnTimeout),
		snapshot.KernelNBDsMax(k.NBDsMax),
	}
	if k.Connections > 0 {
		opts = append(opts, snapshot.KernelConnections(k.Connections))
	}
	return opts
}
