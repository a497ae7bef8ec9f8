package testutil

import "testing"

// Portable is what the portable attach (nbdfuse -> losetup -r) needs to
// mount an image: root, FUSE, loop devices, nbdkit, nbdfuse and losetup,
// then tools.
func Portable(tools ...string) Need {
	needs := []Need{Root, Device("/dev/fuse"), Device("/dev/loop-control"),
		Tool(append([]string{"nbdkit", "nbdfuse", "losetup"}, tools...)...)}
	return Need{func() []string {
		var missing []string
		for _, n := range needs {
			missing = append(missing, n.missing()...)
		}
		return missing
	}}
}

// RequirePortable fails the test unless the portable attach can run, and
// tools are installed: Require(t, Portable(tools...)).
func RequirePortable(t testing.TB, tools ...string) {
	t.Helper()
	Require(t, Portable(tools...))
}
