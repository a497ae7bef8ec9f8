package nodeconfig

import (
	"fmt"
	"os"

	"github.com/sluice-project/sluice/snapshot/nodeconfig/tomledit"
)

// RegistryConfigPath returns the registry config_path of containerd's
// config src: the directories of hosts.toml files CRI pulls through
// (version 2: the grpc.v1.cri plugin's registry table; 3 and 4: the
// cri.v1.images plugin's), "" if it sets none.
func RegistryConfigPath(src []byte) (string, error) {
	d, err := tomledit.Parse(src)
	if err != nil {
		return "", err
	}
	v, err := configVersion(d)
	if err != nil {
		return "", err
	}
	key := append(criImagesKey, "registry", "config_path")
	if v == 2 {
		key = tomledit.Key{"plugins", "io.containerd.grpc.v1.cri", "registry", "config_path"}
	}
	cur, ok := d.Get(key)
	if !ok {
		return "", nil
	}
	p, isString := cur.(string)
	if !isString {
		return "", fmt.Errorf("%s: want a string, got %v", key, cur)
	}
	return p, nil
}

// SetRegistryConfigPath edits sluiced's config src so that it reads the
// hosts.toml files of configPath: [registry] config_path.
func SetRegistryConfigPath(src []byte, configPath string) ([]byte, []string, error) {
	d, err := tomledit.Parse(src)
	if err != nil {
		return nil, nil, err
	}
	changed, err := d.Set(tomledit.Key{"registry", "config_path"}, configPath)
	if err != nil || !changed {
		return src, nil, err
	}
	return d.Bytes(), []string{fmt.Sprintf("registry.config_path = %q", configPath)}, nil
}

// InstallRegistryConfigPath gives the sluiced config at sluicedPath the
// registry config_path of the containerd config at containerdPath, so that
// sluiced fetches through the mirrors containerd pulls through. Nothing
// changes when containerd's config sets none (sluiced keeps its default).
// check and dryRun are InstallTrust's.
func InstallRegistryConfigPath(sluicedPath, containerdPath string, check func([]byte) error, dryRun bool) (Change, error) {
	src, err := os.ReadFile(containerdPath)
	if err != nil {
		return Change{Path: sluicedPath}, fmt.Errorf("containerd config: %w", err)
	}
	configPath, err := RegistryConfigPath(src)
	if err != nil {
		return Change{Path: sluicedPath}, fmt.Errorf("containerd config %s: %w", containerdPath, err)
	}
	if configPath == "" {
		return Change{Path: sluicedPath}, nil
	}
	return editSluiced(sluicedPath, "with containerd's registry config_path",
		func(b []byte) ([]byte, []string, error) { return SetRegistryConfigPath(b, configPath) }, check, dryRun)
}
