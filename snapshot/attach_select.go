package snapshot

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
)

// Attacher modes, as the agent's configuration names them.
const (
	// AttachAuto uses the kernel attacher where it works, else the
	// portable one.
	AttachAuto = "auto"
	// AttachKernel uses the kernel attacher, or fails.
	AttachKernel = "kernel"
	// AttachPortable uses the portable attacher, or fails.
	AttachPortable = "portable"
)

// AttacherConfig says which attacher NewAttacher makes and how.
type AttacherConfig struct {
	// Mode is AttachAuto, AttachKernel or AttachPortable.
	Mode string
	// StateDir holds the attachers' device state: StateDir/devices for the
	// portable attacher, StateDir/nbd for the kernel one.
	StateDir string
	// Server serves the kernel attacher's devices.
	Server ExportServer
	// Kernel and Portable configure the attacher of that name.
	Kernel   []KernelOpt
	Portable []PortableOpt
}

// NewAttacher returns the attacher cfg asks for and one line saying which
// and why, for the agent's log. With AttachAuto it is the kernel attacher
// if it is available (see KernelAttacher.Available, which loads the nbd
// module if needed), else the portable one, the line saying why the kernel
// one is not used. With AttachKernel or AttachPortable it is that one, or
// an error saying why it cannot work here.
func NewAttacher(ctx context.Context, cfg AttacherConfig) (Attacher, string, error) {
	kernel := func() Attacher {
		return NewKernelAttacher(filepath.Join(cfg.StateDir, "nbd"), cfg.Server, cfg.Kernel...)
	}
	portable := func() Attacher {
		return NewPortableAttacher(filepath.Join(cfg.StateDir, "devices"), cfg.Portable...)
	}
	var candidates []Attacher
	switch cfg.Mode {
	case AttachAuto:
		candidates = []Attacher{kernel(), portable()}
	case AttachKernel:
		candidates = []Attacher{kernel()}
	case AttachPortable:
		candidates = []Attacher{portable()}
	default:
		return nil, "", fmt.Errorf("attacher %q: want %q, %q or %q", cfg.Mode, AttachAuto, AttachKernel, AttachPortable)
	}
	att, why, err := SelectAttacher(ctx, candidates...)
	if err != nil {
		return nil, "", fmt.Errorf("attacher %q: %s: %w", cfg.Mode, why, err)
	}
	if cfg.Mode != AttachAuto {
		why = strings.Replace(why, "(first choice, available)", "(configured, available)", 1)
	}
	return att, why, nil
}
