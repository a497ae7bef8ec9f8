// Package crikeychain gives the node agent the registry credentials that
// kubelet sends with each CRI image pull (a pod's imagePullSecrets), the
// way stargz-snapshotter and SOCI do: the agent serves the CRI image
// service on a socket of its own (kubelet's --image-service-endpoint),
// forwards every call to containerd's CRI socket unchanged (Proxy), and
// keeps each PullImage's credentials, keyed by the image reference, for
// its artifact lookups and chunk fetches of that image (Store.Keychain).
//
// Terms: a pull's credentials are its CRI AuthConfig (user and password,
// or an identity or registry token), meant for its ServerAddress's
// registry when one is given, else for the registry the image names (as
// containerd reads them). An image reference is normalized as containerd's
// CRI plugin normalizes it (docker.io/library/app:latest for "app"), which
// is also the reference its snapshot labels carry.
//
// Credentials stay in this process's memory: never written to a file,
// logged, or put in a metric label. An image's are replaced by its next
// pull that carries some, and dropped when the image is removed through
// the proxy. An authenticator handed out reads the store each time it is
// asked, so that a bearer token that expires while a container reads is
// refreshed with the credentials of the image's latest pull (a rotated
// secret included); after the image is removed it keeps the last ones it
// saw. An agent that restarts forgets them all: images it adopts fetch
// with the node's credentials until kubelet pulls them again.
package crikeychain
