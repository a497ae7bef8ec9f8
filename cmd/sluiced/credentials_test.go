package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestAgentCredentialsFile streams an image from a registry that wants
// basic authentication, with the node credentials file, and never logs
// the secret.
func TestAgentCredentialsFile(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext()
	const user, pass = "node", "s3cret-Pa55"
	reg := newTestRegistry(t, basicAuth(user, pass))
	kc := staticKeychain{authn.FromConfig(authn.AuthConfig{Username: user, Password: pass})}
	img := pushImage(t, reg, "private/app:v1", kc, baseLayer, appLayer)
	convert(t, img, imageconvKeychain(kc))

	dir := tempDir(t)
	token := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	creds := filepath.Join(dir, "credentials.json")
	if err := os.WriteFile(creds, []byte(`{"auths": {"`+reg.host+`": {"auth": "`+token+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}

	// Without credentials the registry says no, and the error says who.
	noCreds := mustStartAgent(t, filepath.Join(dir, "a"), func(c *Config) {
		c.Policy = "require"
		c.PlainHTTP = []string{reg.host}
		c.CredentialsFile = filepath.Join(dir, "absent.json")
	})
	_, err := unpack(t, ctx, noCreds.client(t), img)
	errorContains(t, "without credentials", err, img.ref, "registry denied access", "registry "+reg.host)
	if err := noCreds.close(); err != nil {
		t.Fatal(err)
	}

	a := mustStartAgent(t, filepath.Join(dir, "b"), func(c *Config) {
		c.Policy = "require"
		c.PlainHTTP = []string{reg.host}
		c.CredentialsFile = creds
	})
	sn := a.client(t)
	if applied, err := unpack(t, ctx, sn, img); err != nil || applied != 0 {
		t.Fatalf("unpack with the credentials file: %d layers applied, %v", applied, err)
	}
	mounts, err := sn.Prepare(ctx, "container", img.chain[len(img.chain)-1])
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, ctx, mounts, img.files) // reads fetch chunks, with the credentials
	if got := a.metric(t, `sluice_fetched_bytes_total`); got <= 0 {
		t.Errorf("fetched_bytes_total = %v", got)
	}
	testutil.RemoveAll(t, ctx, sn)
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	for _, l := range []*logBuffer{noCreds.logs, a.logs} {
		for _, secret := range []string{pass, token} {
			if strings.Contains(l.String(), secret) {
				t.Errorf("the log holds the secret %q", secret)
			}
		}
	}
}
