package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSampleConfigIsTheDefaults(t *testing.T) {
	c, err := loadConfig("config.sample.toml")
	if err != nil {
		t.Fatal(err)
	}
	d := defaultConfig()
	if err := d.validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.PlainHTTP) == 0 {
		c.PlainHTTP = nil // the sample's [] is the default's nil
	}
	if len(c.Trust.Keys) == 0 {
		c.Trust.Keys = nil
	}
	if !reflect.DeepEqual(c, d) {
		t.Errorf("sample %+v differs from defaults %+v", c, d)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for body, want := range map[string]string{
		`policy = "sometimes"`:                                           "policy:",
		`stream_min_size = "small"`:                                      "stream_min_size: want a size",
		`stream_min_size = "-1MiB"`:                                      "stream_min_size: want a size",
		`stream_min_size = 16`:                                           "stream_min_size",
		`polcy = "require"`:                                              "unknown field polcy",
		"[cache]\nsize = \"lots\"":                                       "cache.size:",
		"[cache]\nsize = 10":                                             "cache.size",
		"[cache]\nread_timeout = \"-1s\"":                                "cache.read_timeout:",
		"[cache]\nbackground_quiet = \"-1s\"":                            "cache.background_quiet:",
		"[cache]\nbackground_quiet = \"soon\"":                           "cache.background_quiet:",
		"[cache]\nreadahead = \"far\"":                                   "cache.readahead:",
		"[cache]\nfault_around = -1":                                     "cache.fault_around:",
		"[cache]\nmetadata_first = \"yes\"":                              "metadata_first",
		"[cache]\nfetch_concurrency = 0":                                 "cache.fetch_concurrency:",
		"[cache]\nbogus = 1":                                             "unknown field cache.bogus",
		`metrics_address = "0.0.0.0:9808"`:                               "metrics_address:",
		`root = "relative/dir"`:                                          "root:",
		`attacher = "magic"`:                                             "attacher:",
		`log_level = "chatty"`:                                           "log_level:",
		`plain_http = ["http://x/y"]`:                                    "plain_http:",
		"policy = \"require\"\npolicy = \"x\"":                           "policy",
		`root = `:                                                        "line 1",
		"[cache]\nmemory_cache = \"much\"":                               "cache.memory_cache:",
		`credentials_file = "creds.json"`:                                "credentials_file:",
		"[trust]\npolicy = \"maybe\"":                                    "trust.policy:",
		"[trust]\npolicy = \"signed\"":                                   "trust.keys: trust.policy = \"signed\" needs",
		"[trust]\nkeys = [\"/k.pub\"]":                                   "trust.keys: keys are used only under",
		"[trust]\npolicy = \"signed\"\nkeys = [\"/nonexistent/ci.pub\"]": "trust.keys: open /nonexistent/ci.pub",
		"[kernel]\nconnections = 9":                                      "kernel.connections:",
		"[kernel]\ntimeout = \"500ms\"":                                  "kernel.timeout:",
		"[kernel]\ndead_conn_timeout = \"x\"":                            "kernel.dead_conn_timeout:",
		"[kernel]\nnbds_max = 0":                                         "kernel.nbds_max:",
		"[kernel]\nsockets = 2":                                          "unknown field kernel.sockets",
		"[cri_keychain]\naddress = \"cri.sock\"":                         "cri_keychain.address:",
		"[cri_keychain]\nimage_service_path = \"\"":                      "cri_keychain.image_service_path:",
		"[cri_keychain]\nenable_keychain = true\naddress = \"/run/sluice/nbd.sock\"": "cri_keychain.address: \"/run/sluice/nbd.sock\" is another socket's",
		"[cri_keychain]\nenable = true":                                              "unknown field cri_keychain.enable",
	} {
		_, err := loadConfig(writeConfig(t, body))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: error %v, want it to name %q", body, err, want)
		}
	}
	if _, err := loadConfig(filepath.Join(t.TempDir(), "missing.toml")); err == nil {
		t.Error("a missing config file was accepted")
	}
	// A key file that does not parse stops the agent, naming the field and
	// the file.
	junk := filepath.Join(t.TempDir(), "junk.pub")
	if err := os.WriteFile(junk, []byte("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := loadConfig(writeConfig(t, "[trust]\npolicy = \"signed\"\nkeys = [\""+junk+"\"]\n"))
	if err == nil || !strings.Contains(err.Error(), "trust.keys: public key "+junk) {
		t.Errorf("a key file that does not parse: %v", err)
	}
}

func TestConfigOverrides(t *testing.T) {
	c, err := loadConfig(writeConfig(t, "policy = \"require\"\nplain_http = [\"127.0.0.1:5000\"]\n[cache]\nsize = \"1GiB\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != "require" || c.Cache.size != 1<<30 || c.Cache.memoryCache != 8<<20 || c.Cache.Dir != defaultConfig().Cache.Dir || len(c.PlainHTTP) != 1 {
		t.Errorf("got %+v", c)
	}
}

// TestStreamMinSizeConfig: 16 MiB unless set; "0" turns it off.
func TestStreamMinSizeConfig(t *testing.T) {
	for body, want := range map[string]int64{"": 16 << 20, `stream_min_size = "0"`: 0, `stream_min_size = "64MiB"`: 64 << 20, `stream_min_size = "1MB"`: 1000000} {
		c, err := loadConfig(writeConfig(t, body))
		if err != nil || c.streamMinSize != want {
			t.Errorf("config %q: stream_min_size %d, %v; want %d", body, c.streamMinSize, err, want)
		}
	}
}

func TestMissingDefaultConfigMeansDefaults(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "config.toml")
	c, err := (&flags{config: missing}).load()
	if err != nil || c.Root != defaultConfig().Root || c.Cache.size != 10<<30 {
		t.Errorf("no --config and no default file: %+v, %v; want the defaults", c, err)
	}
	if _, err := (&flags{config: missing, configSet: true}).load(); err == nil {
		t.Error("a missing file given with --config was accepted")
	}
}
