package signature

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// PasswordEnv names the environment variable holding the password of an
// encrypted private key, as cosign's COSIGN_PASSWORD does.
const PasswordEnv = "COSIGN_PASSWORD"

// PrivateKey is a signing key: ECDSA P-256, as `cosign generate-key-pair`
// makes.
type PrivateKey struct {
	key *ecdsa.PrivateKey
}

// LoadPrivateKey reads a PEM private key: cosign's encrypted format
// ("ENCRYPTED SIGSTORE PRIVATE KEY" or "ENCRYPTED COSIGN PRIVATE KEY",
// password from $COSIGN_PASSWORD), or a plain PKCS#8 or SEC 1 key.
func LoadPrivateKey(path string) (*PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pass := func(bool) ([]byte, error) { return []byte(os.Getenv(PasswordEnv)), nil }
	k, err := cryptoutils.UnmarshalPEMToPrivateKey(b, pass)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w (an encrypted key takes its password from $%s)", path, err, PasswordEnv)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("private key %s: a %T; sluice signs with ECDSA P-256 keys (cosign generate-key-pair)", path, k)
	}
	return &PrivateKey{key: ec}, nil
}

// GenerateKey makes a new ECDSA P-256 key pair and returns the private key
// encrypted with password (cosign's format) and the public key, both PEM.
func GenerateKey(password []byte) (privatePEM, publicPEM []byte, err error) {
	return cryptoutils.GeneratePEMEncodedECDSAKeyPair(elliptic.P256(), func(bool) ([]byte, error) { return password, nil })
}

// Public is the key's public half.
func (k *PrivateKey) Public() *PublicKey {
	return newPublicKey(&k.key.PublicKey, "")
}

// PublicKey is a key signatures are verified with.
type PublicKey struct {
	key  *ecdsa.PublicKey
	id   string
	path string // where it was read from, for messages
}

func newPublicKey(k *ecdsa.PublicKey, path string) *PublicKey {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		panic(err) // a valid ECDSA P-256 key always marshals
	}
	sum := sha256.Sum256(der)
	return &PublicKey{key: k, id: "sha256:" + hex.EncodeToString(sum[:]), path: path}
}

// LoadPublicKey reads a PEM public key ("PUBLIC KEY", as cosign.pub).
func LoadPublicKey(path string) (*PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := cryptoutils.UnmarshalPEMToPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	ec, ok := k.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("public key %s: a %T; sluice verifies ECDSA P-256 keys (cosign generate-key-pair)", path, k)
	}
	return newPublicKey(ec, path), nil
}

// ID names the key: the sha256 of its PKIX encoding.
func (k *PublicKey) ID() string { return k.id }

func (k *PublicKey) String() string {
	if k.path == "" {
		return k.id
	}
	return k.path + " (" + k.id + ")"
}

// keypair is a sign.Keypair over a PrivateKey.
type keypair struct{ k *PrivateKey }

func (p keypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}

func (p keypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
}

func (p keypair) GetHint() []byte {
	return []byte(base64.StdEncoding.EncodeToString(p.hint()))
}

func (p keypair) hint() []byte {
	der, _ := x509.MarshalPKIXPublicKey(&p.k.key.PublicKey)
	sum := sha256.Sum256(der)
	return sum[:]
}

func (p keypair) GetKeyAlgorithm() string        { return "ECDSA" }
func (p keypair) GetPublicKey() crypto.PublicKey { return &p.k.key.PublicKey }

func (p keypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(&p.k.key.PublicKey)
	return string(b), err
}

// SignData signs the sha256 of data and returns the signature and the
// digest.
func (p keypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	sum := sha256.Sum256(data)
	sig, err := p.k.key.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return nil, nil, errors.Join(errors.New("signing"), err)
	}
	return sig, sum[:], nil
}
