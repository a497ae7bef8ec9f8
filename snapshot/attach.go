package snapshot

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Export is an NBD export on a unix socket: the flattened ext4 image of one
// streamed image, served read-only.
type Export struct {
	// Socket is the path of the unix socket the NBD server listens on.
	Socket string `json:"socket"`
	// Name is the export name to ask for in the NBD handshake.
	Name string `json:"name"`
}

func (e Export) String() string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", e.Name, e.Socket)
}

// Device is a read-only block device attached to an export.
type Device struct {
	// ID names the device to its attacher, stably across restarts.
	ID string
	// Path is the block device node, e.g. /dev/loop3 or /dev/nbd0.
	Path string
	// Export is the export the device reads from now.
	Export Export
}

// Attacher makes block devices from NBD exports. Implementations keep
// enough state on disk to find their devices again after the process
// restarts (Devices), and to move a device to a new export without
// detaching it (Adopt), so that a filesystem mounted on it never notices.
type Attacher interface {
	// Name is a short name for logs and state, e.g. "portable", "kernel".
	Name() string
	// Attach connects a new read-only block device to exp.
	Attach(ctx context.Context, exp Export) (*Device, error)
	// Detach disconnects dev and removes what Attach made for it. The
	// device must not be mounted.
	Detach(ctx context.Context, dev *Device) error
	// Devices lists the devices this attacher made that still exist, such
	// as those a previous process attached; it drops state of devices that
	// are gone.
	Devices(ctx context.Context) ([]*Device, error)
	// Adopt re-binds dev, listed by Devices, to exp (an export served by
	// this process), keeping the device and anything mounted on it.
	Adopt(ctx context.Context, dev *Device, exp Export) error
}

// Availability is an optional Attacher capability: Available says why the
// attacher cannot work on this host, or nil.
type Availability interface {
	Available(ctx context.Context) error
}

// ErrNoAttacher is returned by SelectAttacher when none is usable.
var ErrNoAttacher = errors.New("no usable device attacher")

// Errors of the kernel attacher, tested with errors.Is.
var (
	// ErrNoNBDFamily: the kernel has no "nbd" generic netlink family (the
	// nbd module is not loaded, or does not exist).
	ErrNoNBDFamily = errors.New(`no "nbd" generic netlink family (kernel nbd driver not loaded)`)
	// ErrNoPermission: the process lacks the privilege to attach devices.
	ErrNoPermission = errors.New("permission denied")
	// ErrDeviceBusy: the device is mounted, opened, or served by another
	// process.
	ErrDeviceBusy = errors.New("device busy")
	// ErrDeviceGone: the device is no longer connected, or no longer the
	// one this attacher made.
	ErrDeviceGone = errors.New("device no longer connected")
	// ErrDeviceDead: the device failed reads while no agent served it (its
	// dead-connection timeout passed); it is replaced rather than adopted.
	ErrDeviceDead = errors.New("device failed reads while no agent served it")
	// ErrAttacherClosed: the kernel attacher was closed; it serves no new
	// device.
	ErrAttacherClosed = errors.New("attacher closed")
)

// SelectAttacher returns the first of candidates (in order of preference)
// that is available, and one line saying why it was chosen, for the agent
// to log: "kernel: ...; using portable". A candidate without the
// Availability capability counts as available.
func SelectAttacher(ctx context.Context, candidates ...Attacher) (Attacher, string, error) {
	var skipped []string
	for _, a := range candidates {
		if av, ok := a.(Availability); ok {
			if err := av.Available(ctx); err != nil {
				skipped = append(skipped, fmt.Sprintf("%s unavailable: %v", a.Name(), err))
				continue
			}
		}
		why := "using " + a.Name() + " attacher"
		if len(skipped) > 0 {
			why = strings.Join(skipped, "; ") + "; " + why
		} else {
			why += " (first choice, available)"
		}
		return a, why, nil
	}
	return nil, strings.Join(skipped, "; "), ErrNoAttacher
}
