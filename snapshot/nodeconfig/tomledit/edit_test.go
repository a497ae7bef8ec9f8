package tomledit

import (
	"errors"
	"strings"
	"testing"
)

// edit parses doc, applies f and returns the result.
func edit(t *testing.T, doc string, f func(d *Doc) error) string {
	t.Helper()
	d, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if err := f(d); err != nil {
		t.Fatal(err)
	}
	return string(d.Bytes())
}

func set(path Key, v any) func(d *Doc) error {
	return func(d *Doc) error {
		_, err := d.Set(path, v)
		return err
	}
}

func TestSet(t *testing.T) {
	for _, tc := range []struct {
		name      string
		doc, want string
		path      Key
		value     any
	}{{
		name: "replace a value, keeping its line's comment and its quotes",
		doc: `# top
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter   =   'overlayfs'  # the default
  x = 1
`,
		path:  Key{"plugins", "io.containerd.grpc.v1.cri", "containerd", "snapshotter"},
		value: "sluice",
		want: `# top
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter   =   'sluice'  # the default
  x = 1
`,
	}, {
		name: "a new key after the table's last key, before comments and sub-tables",
		doc: `[a]
    x = 1
    y = "two"
    # about [a.b]

    [a.b]
      z = 3
`,
		path:  K("a.new"),
		value: false,
		want: `[a]
    x = 1
    y = "two"
    new = false
    # about [a.b]

    [a.b]
      z = 3
`,
	}, {
		name: "a new key in a table defined by dotted keys goes beside them",
		doc: `[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "pause"
  containerd.snapshotter = "overlayfs"
  containerd."default_runtime_name" = "runc"
  other = 1
`,
		path:  Key{"plugins", "io.containerd.grpc.v1.cri", "containerd", "disable_snapshot_annotations"},
		value: false,
		want: `[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "pause"
  containerd.snapshotter = "overlayfs"
  containerd."default_runtime_name" = "runc"
  containerd.disable_snapshot_annotations = false
  other = 1
`,
	}, {
		name: "a new table joins the tables of the same name, indented like its siblings, in their quote style",
		doc: `[plugins]
  [plugins.'io.containerd.gc.v1.scheduler']
    pause_threshold = 0.02

  [plugins.'io.containerd.nri.v1.nri']
    disable = false

[cgroup]
  path = ''
`,
		path:  Key{"plugins", "io.containerd.cri.v1.images", "snapshotter"},
		value: "sluice",
		want: `[plugins]
  [plugins.'io.containerd.gc.v1.scheduler']
    pause_threshold = 0.02

  [plugins.'io.containerd.nri.v1.nri']
    disable = false

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'sluice'

[cgroup]
  path = ''
`,
	}, {
		name: "a new table with no relative goes at the end, even without a final newline",
		doc:  "version = 3\n[grpc]\naddress = \"/run/c.sock\"",
		path: K("proxy_plugins.sluice.type"), value: "snapshot",
		want: "version = 3\n[grpc]\naddress = \"/run/c.sock\"\n\n[proxy_plugins.sluice]\ntype = \"snapshot\"\n",
	}, {
		name: "a root key after the root's last key",
		doc:  "# c\nroot = \"/x\"\n\n[a]\nb = 1\n",
		path: K("version"), value: 2,
		want: "# c\nroot = \"/x\"\nversion = 2\n\n[a]\nb = 1\n",
	}, {
		name: "CRLF line endings are kept",
		doc:  "version = 2\r\n[a]\r\n  b = 1\r\n",
		path: K("a.c"), value: "x",
		want: "version = 2\r\n[a]\r\n  b = 1\r\n  c = \"x\"\r\n",
	}, {
		name: "a value over several lines is replaced whole",
		doc:  "[trust]\nkeys = [\n  \"/a.pub\", # first\n]\npolicy = \"any\"\n",
		path: K("trust.keys"), value: []string{"/a.pub", "/b.pub"},
		want: "[trust]\nkeys = [\"/a.pub\", \"/b.pub\"]\npolicy = \"any\"\n",
	}, {
		name: "a string a literal string cannot hold is a basic string",
		doc:  "[a]\n  b = 'x'\n",
		path: K("a.b"), value: "it's",
		want: "[a]\n  b = \"it's\"\n",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := edit(t, tc.doc, set(tc.path, tc.value))
			if got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
			// Setting it again changes nothing.
			if again := edit(t, got, set(tc.path, tc.value)); again != got {
				t.Errorf("a second Set changed the document:\n%s", again)
			}
		})
	}
}

func TestSetUnchanged(t *testing.T) {
	doc := "[a]\n  b = \"x\"  # keep\n  c = [\"p\", 'q']\n  d = false\n"
	d, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range []KeyValue{{"b", "x"}, {"c", []string{"p", "q"}}, {"d", false}} {
		changed, err := d.Set(K("a", kv.Key), kv.Value)
		if err != nil || changed {
			t.Errorf("Set(a.%s, %v) = %v, %v; want unchanged", kv.Key, kv.Value, changed, err)
		}
	}
	if string(d.Bytes()) != doc {
		t.Errorf("document changed:\n%s", d.Bytes())
	}
}

func TestAppendArrayTable(t *testing.T) {
	doc := `[plugins]
  [plugins.'io.containerd.transfer.v1.local']
    max_concurrent_downloads = 3

    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = 'linux/amd64'
      snapshotter = 'overlayfs'

      [plugins.'io.containerd.transfer.v1.local'.unpack_config.extra]
        x = 1

  [plugins.'io.containerd.other']
    y = 2
`
	want := `[plugins]
  [plugins.'io.containerd.transfer.v1.local']
    max_concurrent_downloads = 3

    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = 'linux/amd64'
      snapshotter = 'overlayfs'

      [plugins.'io.containerd.transfer.v1.local'.unpack_config.extra]
        x = 1

    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = 'linux/amd64'
      snapshotter = 'sluice'

  [plugins.'io.containerd.other']
    y = 2
`
	got := edit(t, doc, func(d *Doc) error {
		return d.AppendArrayTable(Key{"plugins", "io.containerd.transfer.v1.local", "unpack_config"},
			[]KeyValue{{"platform", "linux/amd64"}, {"snapshotter", "sluice"}})
	})
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		path      Key
		want      error
		mentions  string
	}{
		{"invalid TOML", "[a]\nb = = 1\n", K("a.c"), ErrInvalid, "line 2"},
		{"a duplicate key", "[a]\nb = 1\nb = 2\n", K("a.c"), ErrInvalid, "line 3"},
		{"a duplicate table", "[a]\n[a]\n", K("a.c"), ErrInvalid, "line 2"},
		{"inside an inline table", "[proxy_plugins]\nsluice = { type = \"snapshot\" }\n", K("proxy_plugins.sluice.address"), ErrUnsupported, "proxy_plugins.sluice is an inline table"},
		{"inside a value", "plugins = 3\n", K("plugins.x.y"), ErrUnsupported, "plugins is a value"},
		{"inside an array of tables", "[[a]]\nb = 1\n", K("a.b"), ErrUnsupported, "a is an array of tables"},
		{"a table replaced by a value", "[a.b]\nc = 1\n", K("a.b"), ErrUnsupported, "a.b is a table"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse([]byte(tc.doc))
			if err == nil {
				_, err = d.Set(tc.path, "x")
				if string(d.Bytes()) != tc.doc {
					t.Errorf("the document changed although the edit was refused:\n%s", d.Bytes())
				}
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mentions) {
				t.Errorf("got %v; want %v mentioning %q", err, tc.want, tc.mentions)
			}
		})
	}
}

func TestKeyString(t *testing.T) {
	k := Key{"plugins", "io.containerd.grpc.v1.cri", "containerd", "snap shot"}
	if got, want := k.String(), `plugins."io.containerd.grpc.v1.cri".containerd."snap shot"`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
