package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Keychain resolves registry credentials from credentialsFile (docker
// config format) first, then the docker config (~/.docker/config.json, $DOCKER_CONFIG) and
// the credential helpers either names. The file is read at each lookup, so
// rotated credentials apply without a restart; a missing file gives none.
func Keychain(credentialsFile string) authn.Keychain {
	if credentialsFile == "" {
		return authn.DefaultKeychain
	}
	return authn.NewMultiKeychain(fileKeychain{path: credentialsFile}, authn.DefaultKeychain)
}

// fileKeychain reads a docker-config-format file ({"auths": {...}},
// "credHelpers", "credsStore").
type fileKeychain struct{ path string }

// CheckCredentialsFile reports whether a credentials file for Keychain is
// there and parses; errors never quote its content.
func CheckCredentialsFile(path string) (present bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if _, err := config.LoadFromReader(f); err != nil {
		return true, fmt.Errorf("%s is not a docker config file (want {\"auths\": {...}})", path)
	}
	return true, nil
}

func (k fileKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	f, err := os.Open(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		return authn.Anonymous, nil
	}
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	defer f.Close()
	cf, err := config.LoadFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("credentials file %s is not a docker config file", k.path)
	}
	// As authn.DefaultKeychain: the repository first, then the registry;
	// Docker Hub under its historical key.
	var empty types.AuthConfig
	for _, key := range []string{target.String(), target.RegistryStr()} {
		if key == name.DefaultRegistry {
			key = authn.DefaultAuthKey
		}
		cfg, err := cf.GetAuthConfig(key)
		if err != nil {
			return nil, fmt.Errorf("credentials file %s, registry %s: %w", k.path, target.RegistryStr(), err)
		}
		cfg.ServerAddress = ""
		if cfg != empty {
			return authn.FromConfig(authn.AuthConfig{
				Username:      cfg.Username,
				Password:      cfg.Password,
				Auth:          cfg.Auth,
				IdentityToken: cfg.IdentityToken,
				RegistryToken: cfg.RegistryToken,
			}), nil
		}
	}
	return authn.Anonymous, nil
}
