// Package signature signs sluice artifacts and verifies their signatures,
// with cosign-compatible keys and sigstore bundles.
//
// A signature covers an artifact manifest's digest, and so the index, the
// data and the subject the manifest names. It is a sigstore bundle
// (application/vnd.dev.sigstore.bundle.v0.3+json) holding a message
// signature over the manifest, made with a private key in the format
// `cosign generate-key-pair` writes (or a plain PKCS#8 / SEC 1 PEM key),
// and stored in the registry the way cosign stores bundles on OCI 1.1
// registries: as a referrer of the artifact manifest, an OCI manifest whose
// one layer is the bundle. Verification is offline (sigstore-go, with the
// configured public keys as trusted material and no transparency log or
// timestamp authority): a node trusts exactly the keys it is given.
//
// Why sigstore bundles and not notation: cosign-style keys are bare
// public keys that a node config lists as files, with no certificate
// chain or trust store to run; the bundle is a documented, versioned
// format that sigstore-go (a well-kept library) verifies, and cosign's own
// tools read; and the same bundle can later carry keyless (Fulcio) or
// transparency-log material without a format change.
package signature
