package main

import "testing"

// TestPullDefaultsFollowCtr: with no flags, sluice pull talks to the
// containerd and namespace ctr would ($CONTAINERD_ADDRESS,
// $CONTAINERD_NAMESPACE, else containerd's socket and "default"), so that
// "sluice pull IMAGE && ctr run ... IMAGE" finds the image.
func TestPullDefaultsFollowCtr(t *testing.T) {
	defaults := func() (address, namespace string) {
		cmd := newPull(&globals{})
		return cmd.Flags().Lookup("address").DefValue, cmd.Flags().Lookup("namespace").DefValue
	}
	t.Setenv("CONTAINERD_ADDRESS", "")
	t.Setenv("CONTAINERD_NAMESPACE", "")
	if a, ns := defaults(); a != "/run/containerd/containerd.sock" || ns != "default" {
		t.Errorf("defaults without environment: address %q, namespace %q", a, ns)
	}
	t.Setenv("CONTAINERD_ADDRESS", "/tmp/c.sock")
	t.Setenv("CONTAINERD_NAMESPACE", "k8s.io")
	if a, ns := defaults(); a != "/tmp/c.sock" || ns != "k8s.io" {
		t.Errorf("defaults with CONTAINERD_ADDRESS and CONTAINERD_NAMESPACE set: address %q, namespace %q", a, ns)
	}
}
