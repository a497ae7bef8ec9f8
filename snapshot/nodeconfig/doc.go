// Package nodeconfig sets a node's configuration files up for the sluice
// snapshotter, as `sluiced install-config` (called by
// scripts/install-node.sh) does:
//
//   - containerd's config: the proxy plugin "sluice" on sluiced's socket,
//     the CRI plugin's snapshotter, and what makes CRI pass the image
//     labels the snapshotter needs. Config version 2 (containerd 1.6, 1.7)
//     and versions 3 and 4 (containerd 2.x) each get their own keys;
//     version 1 is refused (ErrVersion1) with how to convert it.
//   - sluiced's config: the [trust] keys of policy "signed".
//
// Every edit goes through tomledit, so the rest of a file stays byte for
// byte as it was. A file is backed up (FILE.sluice-backup) before its
// first change; patching twice changes nothing; Uninstall restores the
// backup byte for byte, unless the file changed since (ErrChanged).
//
// Ready waits until sluiced and containerd answer, and containerd knows
// the sluice snapshotter.
package nodeconfig
