package nodeconfig

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/containerd/platforms"

	"github.com/sluice-project/sluice/snapshot/nodeconfig/tomledit"
)

// Plugin is the name containerd knows the sluice snapshotter by: the
// proxy plugin's and the CRI plugin's snapshotter.
const Plugin = "sluice"

var (
	// ErrVersion1 is a containerd config of version 1 (or without a
	// version line): its plugin names predate the ones sluice sets.
	ErrVersion1 = errors.New(`containerd config version 1 (no "version" line, or version = 1) is not edited: ` +
		`its plugin names predate the ones sluice sets. Convert it first: "containerd config migrate" (containerd 2.x) ` +
		`prints it in the current version; with containerd 1.6, start from "containerd config default" ` +
		`(version 2) and carry your settings over; then run this again`)
	// ErrVersion is a config version this package does not know.
	ErrVersion = errors.New("unknown containerd config version")
	// ErrConflict is a setting sluice needs that the config already uses
	// for something else.
	ErrConflict = errors.New("conflicting containerd config")
)

// Options say how containerd reaches sluiced.
type Options struct {
	// Socket is sluiced's snapshotter socket (its config's address).
	Socket string
	// Platform is the platform CRI unpacks images of into sluice, with
	// containerd 2.x (its transfer service's unpack_config). Default:
	// this machine's, as containerd formats it ("linux/amd64").
	Platform string
}

// Patched is containerd's config with sluice set up.
type Patched struct {
	// Version is the config's version: 2, 3 or 4.
	Version int
	// Config is the edited document.
	Config []byte
	// Changes lists the keys set, one line each ("key = value").
	Changes []string
	// Notes are what the operator should know about this config.
	Notes []string
}

// Keys of containerd's config.
var (
	proxyKey = tomledit.Key{"proxy_plugins", Plugin}
	// version 2 (containerd 1.6, 1.7)
	criV2Key = tomledit.Key{"plugins", "io.containerd.grpc.v1.cri", "containerd"}
	// versions 3 and 4 (containerd 2.x)
	criImagesKey = tomledit.Key{"plugins", "io.containerd.cri.v1.images"}
	unpackKey    = tomledit.Key{"plugins", "io.containerd.transfer.v1.local", "unpack_config"}
)

// PatchContainerd sets sluice up in containerd's config src. Everything
// else stays as it was; a config already set up comes back unchanged.
func PatchContainerd(src []byte, o Options) (Patched, error) {
	if o.Socket == "" || !filepath.IsAbs(o.Socket) {
		return Patched{}, fmt.Errorf("sluiced's socket: want an absolute path, got %q", o.Socket)
	}
	if o.Platform == "" {
		o.Platform = platforms.DefaultString()
	}
	if _, err := platforms.Parse(o.Platform); err != nil {
		return Patched{}, fmt.Errorf("platform %q: %w", o.Platform, err)
	}
	d, err := tomledit.Parse(src)
	if err != nil {
		return Patched{}, err
	}
	p := Patched{}
	if p.Version, err = configVersion(d); err != nil {
		return p, err
	}
	if t, ok := d.Get(append(proxyKey, "type")); ok && t != "snapshot" {
		return p, fmt.Errorf("%w: proxy_plugins.%s is a plugin of type %v, not a snapshotter: rename it, or remove it", ErrConflict, Plugin, t)
	}
	e := &editor{d: d, p: &p}
	e.set(append(proxyKey, "type"), "snapshot")
	e.set(append(proxyKey, "address"), o.Socket)
	if p.Version == 2 {
		// CRI of 1.6/1.7 pulls with containerd's client, which passes the
		// image labels to the snapshotter only with annotations on.
		e.set(append(criV2Key, "snapshotter"), Plugin)
		e.set(append(criV2Key, "disable_snapshot_annotations"), false)
		e.noteDisabledCRI("io.containerd.grpc.v1.cri", "cri")
	} else {
		// CRI of 2.x pulls through the transfer service: it passes the
		// labels to a proxy snapshotter that exports this, and unpacks
		// only into snapshotters its unpack_config names.
		e.set(append(proxyKey, "exports", "enable_remote_snapshot_annotations"), "true")
		e.set(append(criImagesKey, "snapshotter"), Plugin)
		e.unpackConfig(o.Platform)
		e.localPull()
		e.noteDisabledCRI("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images")
	}
	if e.err != nil {
		return p, e.err
	}
	p.Config = d.Bytes()
	return p, nil
}

// configVersion returns the version of a containerd config; a missing
// version line is version 1, as containerd reads it.
func configVersion(d *tomledit.Doc) (int, error) {
	v, ok := d.Get(tomledit.Key{"version"})
	if !ok {
		return 0, ErrVersion1
	}
	n, isInt := v.(int64)
	switch {
	case !isInt:
		return 0, fmt.Errorf("%w: version = %v", ErrVersion, v)
	case n == 1:
		return 0, ErrVersion1
	case n < 1 || n > 4:
		return 0, fmt.Errorf("%w: version = %d (versions 2 to 4 are known: containerd 1.6 to 2.x)", ErrVersion, n)
	}
	return int(n), nil
}

// editor applies edits until the first error, noting each change.
type editor struct {
	d   *tomledit.Doc
	p   *Patched
	err error
}

func (e *editor) set(k tomledit.Key, v any) {
	if e.err != nil {
		return
	}
	old, had := e.d.Get(k)
	changed, err := e.d.Set(k, v)
	if err != nil {
		e.err = err
		return
	}
	if changed {
		line := fmt.Sprintf("%s = %#v", k, v)
		if had {
			line += fmt.Sprintf(" (was %#v)", old)
		}
		e.p.Changes = append(e.p.Changes, line)
	}
}

// unpackConfig makes the transfer service unpack the platform's images
// into sluice too. containerd uses its built-in list only while the file
// has none, so a file without one gets containerd's default entry
// written out beside sluice's.
func (e *editor) unpackConfig(platform string) {
	if e.err != nil {
		return
	}
	cur, had := e.d.Get(unpackKey)
	if entries, ok := cur.([]map[string]any); ok {
		for _, u := range entries {
			if u["snapshotter"] == Plugin && u["platform"] == platform {
				return
			}
		}
	}
	if !had {
		e.appendUnpack([]tomledit.KeyValue{{Key: "platform", Value: platform}, {Key: "snapshotter", Value: "overlayfs"}, {Key: "differ", Value: "walking"}})
		e.p.Notes = append(e.p.Notes, fmt.Sprintf("%s was not in the file, so containerd used its built-in list; "+
			"a list in the file replaces it, so its main entry (overlayfs for %s) is written out beside sluice's "+
			"(containerd 2.2+ also lists an optional erofs entry: add it if the node uses erofs)", unpackKey, platform))
	}
	e.appendUnpack([]tomledit.KeyValue{{Key: "platform", Value: platform}, {Key: "snapshotter", Value: Plugin}})
}

func (e *editor) appendUnpack(kvs []tomledit.KeyValue) {
	if e.err != nil {
		return
	}
	if e.err = e.d.AppendArrayTable(unpackKey, kvs); e.err == nil {
		line := fmt.Sprintf("[[%s]]", unpackKey)
		for _, kv := range kvs {
			line += fmt.Sprintf(" %s = %#v", kv.Key, kv.Value)
		}
		e.p.Changes = append(e.p.Changes, line)
	}
}

// localPull turns image labels on where containerd 2.x's CRI does not
// pull through the transfer service: it pulls with its own client when
// its config has settings the transfer service lacks, and that client
// passes the labels only with disable_snapshot_annotations = false.
func (e *editor) localPull() {
	img, _ := e.d.Get(criImagesKey)
	m, _ := img.(map[string]any)
	var why string
	switch {
	case m["use_local_image_pull"] == true:
		why = "use_local_image_pull = true"
	case m["discard_unpacked_layers"] == true:
		why = "discard_unpacked_layers = true"
	case m["image_pull_with_sync_fs"] == true:
		why = "image_pull_with_sync_fs = true"
	case m["max_concurrent_downloads"] != nil && m["max_concurrent_downloads"] != int64(3):
		why = fmt.Sprintf("max_concurrent_downloads = %v", m["max_concurrent_downloads"])
	default:
		reg, _ := m["registry"].(map[string]any)
		for _, k := range []string{"mirrors", "configs", "auths"} {
			if t, _ := reg[k].(map[string]any); len(t) > 0 {
				why = "registry." + k
				break
			}
		}
	}
	if why == "" {
		return
	}
	e.set(append(criImagesKey, "disable_snapshot_annotations"), false)
	e.p.Notes = append(e.p.Notes, fmt.Sprintf("CRI pulls with its own client, not the transfer service, because of %s in %s: "+
		"it passes the image labels only with disable_snapshot_annotations = false", why, criImagesKey))
}

// noteDisabledCRI notes a disabled CRI plugin: Kubernetes cannot use
// sluice then (sluice pull and ctr still can).
func (e *editor) noteDisabledCRI(names ...string) {
	dis, _ := e.d.Get(tomledit.Key{"disabled_plugins"})
	list, _ := dis.([]any)
	for _, n := range names {
		if slices.Contains(list, any(n)) {
			e.p.Notes = append(e.p.Notes, fmt.Sprintf("disabled_plugins lists %q: the CRI plugin is off, so Kubernetes does not pull through sluice (\"sluice pull\" and ctr still do)", n))
		}
	}
}

// Configured reports whether containerd's config src names the sluice
// proxy plugin.
func Configured(src []byte) (bool, error) {
	d, err := tomledit.Parse(src)
	if err != nil {
		return false, err
	}
	_, ok := d.Get(proxyKey)
	return ok, nil
}

// optionsOf returns the options a config set up by PatchContainerd was
// set up with.
func optionsOf(d *tomledit.Doc) Options {
	var o Options
	o.Socket, _ = mustString(d.Get(append(proxyKey, "address")))
	cur, _ := d.Get(unpackKey)
	entries, _ := cur.([]map[string]any)
	for _, u := range entries {
		if u["snapshotter"] == Plugin {
			o.Platform, _ = u["platform"].(string)
		}
	}
	return o
}

func mustString(v any, ok bool) (string, bool) {
	s, isString := v.(string)
	return s, ok && isString
}
