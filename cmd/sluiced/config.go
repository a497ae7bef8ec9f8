package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/cmd/internal/cliutil"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// Config is /etc/sluice/config.toml. Every field is optional; the comment
// gives its default. config.sample.toml shows them all.
type Config struct {
	// Root holds snapshots, their metadata and image mounts. Default "/var/lib/sluice".
	Root string `toml:"root"`
	// Address is the containerd proxy snapshotter's gRPC socket. Default "/run/sluice/snapshotter.sock".
	Address string `toml:"address"`
	// NBDSocket is where the NBD exports are served, owner-only. Default "/run/sluice/nbd.sock".
	NBDSocket string `toml:"nbd_socket"`
	// MetricsAddress serves /healthz and /metrics; loopback only. Default "127.0.0.1:9808"; "" disables it.
	MetricsAddress string `toml:"metrics_address"`
	// LogLevel is debug, info, warn or error. Default "info".
	LogLevel string `toml:"log_level"`
	// Policy for images without a usable artifact: "fallback" pulls them
	// normally, "require" fails the pull. Default "fallback".
	Policy string `toml:"policy"`
	// StreamMinSize: an image whose flattened size (as its artifact
	// declares it) is under this is pulled the ordinary way, which is
	// sooner for an image this small than the artifact lookup and attach
	// (logged and counted as a fallback, reason "image smaller than
	// stream_min_size"). Policy "require" streams every image whatever
	// this says. Default "16MiB"; "0" streams every image.
	StreamMinSize string `toml:"stream_min_size"`
	streamMinSize int64
	// Attacher is "auto", "kernel" or "portable". Default "auto": the kernel
	// nbd driver where it works (loading the nbd module if needed), nbdfuse
	// + loop otherwise; the log says which and why.
	Attacher string `toml:"attacher"`
	// PlainHTTP lists registries reached over plain HTTP, e.g. ["127.0.0.1:5000"]. Default none.
	PlainHTTP []string `toml:"plain_http"`
	// ConvertService is the URL of a `sluice convert-service`, e.g.
	// "http://sluice-convert.sluice.svc:8080": an image pulled the
	// ordinary way because it has no artifact is sent there once
	// (deduplicated, rate-limited, in the background) to be converted for
	// its next pull. Default "" (off).
	ConvertService string `toml:"convert_service"`
	// CredentialsFile is a docker-config-format file of node credentials,
	// used before ~/.docker/config.json and credential helpers; read at
	// each lookup, so it may appear or change later. "" turns it off.
	// Default "/etc/sluice/credentials.json" (none while it does not exist).
	CredentialsFile string            `toml:"credentials_file"`
	Cache           CacheConfig       `toml:"cache"`
	Kernel          KernelConfig      `toml:"kernel"`
	Trust           TrustConfig       `toml:"trust"`
	CRIKeychain     CRIKeychainConfig `toml:"cri_keychain"`
	Registry        RegistryConfig    `toml:"registry"`
}

// RegistryConfig is the [registry] table: which hosts serve a registry's
// artifacts and chunks.
type RegistryConfig struct {
	// ConfigPath is containerd's registry host configuration: a directory
	// holding a hosts.toml per registry (containerd's docs/hosts.md).
	// Artifact lookups and chunk fetches go to the hosts it lists (mirrors,
	// in order, then the registry), as containerd's pulls do. Several
	// directories are separated by ':'; "" turns it off. Default
	// "/etc/containerd/certs.d" (nothing while it does not exist);
	// `sluiced install-config` sets it to containerd's CRI config_path.
	ConfigPath string `toml:"config_path"`
}

// CRIKeychainConfig is the [cri_keychain] table: the CRI image service
// proxy through which the credentials of kubelet's pulls (pull secrets)
// reach sluiced (package crikeychain).
type CRIKeychainConfig struct {
	// EnableKeychain serves the proxy on Address; kubelet's
	// --image-service-endpoint (or imageServiceEndpoint) must name it.
	// Default false.
	EnableKeychain bool `toml:"enable_keychain"`
	// Address is the proxy's socket (root only). Default "/run/sluice/cri-image.sock".
	Address string `toml:"address"`
	// ImageServicePath is containerd's CRI socket, where every call is
	// forwarded. Default "/run/containerd/containerd.sock".
	ImageServicePath string `toml:"image_service_path"`
}

// TrustConfig is the [trust] table: which artifacts may decide an image's
// root filesystem.
type TrustConfig struct {
	// Policy is "any": an image's one artifact is used, signed or not, and
	// several are refused as ambiguous; or "signed": only an artifact
	// signed by one of Keys is used, the production setting. Default "any".
	Policy string `toml:"policy"`
	// Keys are the public key files (PEM, as cosign.pub) whose signatures
	// are trusted under policy "signed". Default none.
	Keys []string `toml:"keys"`

	verifier *signature.Verifier
}

// CacheConfig is the [cache] table.
type CacheConfig struct {
	// Dir is the on-disk chunk cache shared by all images. Default "/var/cache/sluice/chunks".
	Dir string `toml:"dir"`
	// Size bounds the cache; least recently used chunks go first. Default "10GiB".
	Size string `toml:"size"`
	// BackgroundRate is bytes per second fetched in the background after
	// the prefetch profile; "0" turns background fetch off. Default "50MiB".
	BackgroundRate string `toml:"background_rate"`
	// BackgroundQuiet holds background fetch back until block reads have
	// stopped faulting for this long, so that it does not share the link
	// with a starting container's faults (for the first minute after an
	// image is opened); "0s" only yields fetch slots.
	// Default "1s".
	BackgroundQuiet string `toml:"background_quiet"`
	// Readahead bounds the bytes one fetch of a sequential stream of
	// faults covers, doubling from the faulting chunk; "0" turns readahead
	// off. Default "4MiB".
	Readahead string `toml:"readahead"`
	// FaultAround: a fault that continues no sequential stream fetches
	// the chunks after its own, up to this many round trips' worth of the
	// link to the registry (its measured rate times its measured round
	// trip), within readahead; 0 turns it off (readahead "0" does too).
	// Default 0 (off; 4 is what to set where starts matter more than
	// bytes).
	FaultAround float64 `toml:"fault_around"`
	// MetadataFirst fetches the chunks of an image's filesystem metadata
	// (superblock, group descriptors, bitmaps, inode tables, directories)
	// as soon as it is attached, before its first reads. Default true.
	MetadataFirst bool `toml:"metadata_first"`
	// ReadTimeout fails a block read with EIO after this long. Default "30s".
	ReadTimeout string `toml:"read_timeout"`
	// FetchConcurrency bounds range requests in flight per image. Default 4.
	FetchConcurrency int `toml:"fetch_concurrency"`
	// MemoryCache keeps recently read chunks in memory too, on top of the
	// on-disk cache; "0" turns it off. Default "8MiB".
	MemoryCache string `toml:"memory_cache"`

	size, backgroundRate, memoryCache, readahead int64
	readTimeout, backgroundQuiet                 time.Duration
}

func defaultConfig() Config {
	return Config{
		Root:            "/var/lib/sluice",
		Address:         "/run/sluice/snapshotter.sock",
		NBDSocket:       "/run/sluice/nbd.sock",
		MetricsAddress:  "127.0.0.1:9808",
		LogLevel:        "info",
		Policy:          "fallback",
		StreamMinSize:   "16MiB",
		Attacher:        "auto",
		CredentialsFile: "/etc/sluice/credentials.json",
		Trust:           TrustConfig{Policy: "any"},
		CRIKeychain: CRIKeychainConfig{
			Address:          "/run/sluice/cri-image.sock",
			ImageServicePath: "/run/containerd/containerd.sock",
		},
		Cache: CacheConfig{
			Dir:              blockcache.DefaultStoreDir,
			Size:             cliutil.FormatSizeExact(blockcache.DefaultStoreSize),
			BackgroundRate:   cliutil.FormatSizeExact(blockcache.DefaultBackgroundRate),
			BackgroundQuiet:  blockcache.DefaultBackgroundQuiet.String(),
			Readahead:        cliutil.FormatSizeExact(blockcache.DefaultReadahead),
			FaultAround:      blockcache.DefaultFaultAround,
			MetadataFirst:    true,
			ReadTimeout:      blockcache.DefaultReadTimeout.String(),
			FetchConcurrency: blockcache.DefaultConcurrency,
			MemoryCache:      cliutil.FormatSizeExact(blockcache.DefaultHotBytes),
		},
		Kernel:   defaultKernelConfig(),
		Registry: RegistryConfig{ConfigPath: "/etc/containerd/certs.d"},
	}
}

// loadConfig reads path over the defaults. Unknown fields, wrong types and
// bad values are errors that name the field.
func loadConfig(path string) (Config, error) {
	c := defaultConfig()
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return c, fmt.Errorf("config %s: %s", path, pe.ErrorWithPosition())
		}
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return c, fmt.Errorf("config %s: unknown field %s", path, strings.Join(keys, ", "))
	}
	if err := c.validate(); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

func (c *Config) validate() error {
	for field, p := range map[string]string{"root": c.Root, "address": c.Address, "nbd_socket": c.NBDSocket, "cache.dir": c.Cache.Dir,
		"cri_keychain.address": c.CRIKeychain.Address, "cri_keychain.image_service_path": c.CRIKeychain.ImageServicePath} {
		if p == "" || !filepath.IsAbs(p) {
			return fmt.Errorf("%s: want an absolute path, got %q", field, p)
		}
	}
	if c.CredentialsFile != "" && !filepath.IsAbs(c.CredentialsFile) {
		return fmt.Errorf("credentials_file: want an absolute path or \"\", got %q", c.CredentialsFile)
	}
	for _, p := range filepath.SplitList(c.Registry.ConfigPath) {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("registry.config_path: want absolute directories separated by ':', or \"\", got %q", c.Registry.ConfigPath)
		}
	}
	if c.ConvertService != "" {
		if u, err := url.Parse(c.ConvertService); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("convert_service: want an http[s]://host[:port] URL or \"\", got %q", c.ConvertService)
		}
	}
	if _, err := cliutil.NewLogger(c.LogLevel); err != nil {
		return fmt.Errorf("log_level: %q is not debug, info, warn or error", c.LogLevel)
	}
	switch c.Policy {
	case "fallback", "require":
	default:
		return fmt.Errorf("policy: want \"fallback\" or \"require\", got %q", c.Policy)
	}
	switch c.Attacher {
	case "auto", "kernel", "portable":
	default:
		return fmt.Errorf("attacher: want \"auto\", \"kernel\" or \"portable\", got %q", c.Attacher)
	}
	if c.MetricsAddress != "" && cliutil.CheckLoopback(c.MetricsAddress) != nil {
		return fmt.Errorf("metrics_address: want a loopback host:port such as 127.0.0.1:9808, got %q", c.MetricsAddress)
	}
	for _, r := range c.PlainHTTP {
		if r == "" || strings.Contains(r, "/") {
			return fmt.Errorf("plain_http: %q is not a registry host[:port]", r)
		}
	}
	if c.CRIKeychain.EnableKeychain {
		switch c.CRIKeychain.Address {
		case c.Address, c.NBDSocket, c.CRIKeychain.ImageServicePath:
			return fmt.Errorf("cri_keychain.address: %q is another socket's (address, nbd_socket or cri_keychain.image_service_path)", c.CRIKeychain.Address)
		}
	}
	if err := c.Trust.validate(); err != nil {
		return err
	}
	var err error
	if c.streamMinSize, err = cliutil.ParseSize(c.StreamMinSize); err != nil {
		return fmt.Errorf("stream_min_size: want a size such as \"16MiB\" (\"0\": stream every image), got %q", c.StreamMinSize)
	}
	if c.Cache.size, err = cliutil.ParseSize(c.Cache.Size); err != nil || c.Cache.size == 0 {
		return fmt.Errorf("cache.size: want a size such as \"10GiB\", got %q", c.Cache.Size)
	}
	if c.Cache.backgroundRate, err = cliutil.ParseSize(c.Cache.BackgroundRate); err != nil {
		return fmt.Errorf("cache.background_rate: want bytes per second such as \"50MiB\", got %q", c.Cache.BackgroundRate)
	}
	if c.Cache.backgroundQuiet, err = time.ParseDuration(c.Cache.BackgroundQuiet); err != nil || c.Cache.backgroundQuiet < 0 {
		return fmt.Errorf("cache.background_quiet: want a duration such as \"1s\" (\"0s\": no window), got %q", c.Cache.BackgroundQuiet)
	}
	if c.Cache.readahead, err = cliutil.ParseSize(c.Cache.Readahead); err != nil {
		return fmt.Errorf("cache.readahead: want a size such as \"4MiB\" (\"0\": off), got %q", c.Cache.Readahead)
	}
	if c.Cache.FaultAround < 0 || c.Cache.FaultAround > 64 {
		return fmt.Errorf("cache.fault_around: want round trips' worth of the link between 0 (off) and 64, got %v", c.Cache.FaultAround)
	}
	if c.Cache.readTimeout, err = time.ParseDuration(c.Cache.ReadTimeout); err != nil || c.Cache.readTimeout <= 0 {
		return fmt.Errorf("cache.read_timeout: want a duration such as \"30s\", got %q", c.Cache.ReadTimeout)
	}
	if c.Cache.memoryCache, err = cliutil.ParseSize(c.Cache.MemoryCache); err != nil {
		return fmt.Errorf("cache.memory_cache: want a size such as \"8MiB\" (\"0\": none), got %q", c.Cache.MemoryCache)
	}
	if c.Cache.FetchConcurrency < 1 || c.Cache.FetchConcurrency > 64 {
		return fmt.Errorf("cache.fetch_concurrency: want 1 to 64, got %d", c.Cache.FetchConcurrency)
	}
	return c.Kernel.validate()
}

func (t *TrustConfig) validate() error {
	switch t.Policy {
	case "any":
		if len(t.Keys) > 0 {
			return fmt.Errorf("trust.keys: keys are used only under trust.policy = \"signed\" (policy is %q)", t.Policy)
		}
		return nil
	case "signed":
	default:
		return fmt.Errorf("trust.policy: want \"any\" or \"signed\", got %q", t.Policy)
	}
	if len(t.Keys) == 0 {
		return errors.New("trust.keys: trust.policy = \"signed\" needs at least one public key file")
	}
	for _, p := range t.Keys {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("trust.keys: want absolute paths, got %q", p)
		}
	}
	var err error
	if t.verifier, err = signature.LoadVerifier(t.Keys...); err != nil {
		return fmt.Errorf("trust.keys: %w", err)
	}
	return nil
}
