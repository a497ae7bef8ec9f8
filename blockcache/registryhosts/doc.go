// Package registryhosts reads containerd's registry host configuration, so
// that sluice fetches an image's artifact and chunks from the hosts the
// node's containerd pulls from: the hosts.toml files (and Docker-style
// certificate files) under a config_path directory, one directory per
// registry (containerd's docs/hosts.md).
//
// Terms: the registry is the host an image reference names
// (127.0.0.1:5000, docker.io); a host is any server of its repositories;
// a mirror is a host other than the registry itself (a pull-through cache,
// an in-cluster P2P engine such as Spegel). Hosts lists a registry's hosts
// in the order they are tried: the mirrors in file order, then the
// registry itself (or hosts.toml's server), as containerd tries them. Each
// host has capabilities: pull (blobs and manifests by digest), resolve
// (manifests by tag), referrers (the referrers API), push.
//
// The files are read with containerd's own loader
// (core/remotes/docker/config), so the hosts, their TLS settings, headers
// and paths are the ones containerd uses. That loader logs a malformed
// hosts.toml and ignores it; here a malformed file is an error naming the
// file and the key, checked first by a strict decode.
package registryhosts
