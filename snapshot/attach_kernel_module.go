package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Available checks that the kernel attacher can work here: it has an
// export server, the process has CAP_SYS_ADMIN, and the nbd generic
// netlink family exists. When the family is missing it loads the nbd
// module (modprobe nbd nbds_max=N max_part=0: no partition scanning of
// devices that hold a bare filesystem) and looks again.
func (a *KernelAttacher) Available(ctx context.Context) error {
	if a.srv == nil {
		return errors.New("no export server to serve its devices")
	}
	if !hasCapSysAdmin() {
		return fmt.Errorf("%w: the nbd netlink commands need CAP_SYS_ADMIN (run sluiced as root)", ErrNoPermission)
	}
	if _, err := a.netlink(); err == nil {
		return nil
	}
	if err := a.loadModule(ctx); err != nil {
		return err
	}
	// The family is registered as the module initialises.
	var err error
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err = a.netlink(); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("the nbd module is loaded but: %w", err)
	}
	return nil
}

// loadModule runs modprobe for the nbd module.
func (a *KernelAttacher) loadModule(ctx context.Context) error {
	args := []string{"nbd", "nbds_max=" + strconv.Itoa(a.nbdsMax), "max_part=0"}
	cmdline := a.modprobe + " " + strings.Join(args, " ")
	out, err := exec.CommandContext(ctx, a.modprobe, args...).CombinedOutput()
	if err != nil {
		msg := string(bytes.TrimSpace(out))
		if msg == "" {
			msg = "no output"
		}
		return fmt.Errorf("%w, and %s failed: %v: %s", ErrNoNBDFamily, cmdline, err, msg)
	}
	zerolog.Ctx(ctx).Info().Str("command", cmdline).Msg("loaded the nbd module")
	return nil
}

// capSysAdmin is CAP_SYS_ADMIN's bit in /proc/self/status's CapEff.
const capSysAdmin = 21

// hasCapSysAdmin reports whether this process has CAP_SYS_ADMIN in its
// effective set.
func hasCapSysAdmin() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return os.Geteuid() == 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<capSysAdmin) != 0
		}
	}
	return false
}
