package configfile

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

type sample struct {
	APIURL string   `yaml:"api_url"`
	APIKey Secret   `yaml:"api_key"`
	Freq   string   `yaml:"update_frequency"`
	List   []string `yaml:"allowlist"`
	Nested struct {
		Enabled bool `yaml:"enabled"`
		Port    int  `yaml:"listen_port"`
	} `yaml:"prometheus"`
}

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	t.Setenv("XDPG_TEST_KEY", "s3cret")
	for _, tc := range []struct {
		name, main, local string
		check             func(*testing.T, sample)
		wantErr           string
	}{
		{
			name: "defaults kept",
			main: "api_url: http://127.0.0.1:8080/\n",
			check: func(t *testing.T, s sample) {
				if s.Freq != "10s" || s.Nested.Port != 60601 {
					t.Errorf("defaults lost: %+v", s)
				}
			},
		},
		{
			name: "env expansion",
			main: "api_key: ${XDPG_TEST_KEY}\nupdate_frequency: $NOT_EXPANDED\n",
			check: func(t *testing.T, s sample) {
				if s.APIKey.Reveal() != "s3cret" || s.Freq != "$NOT_EXPANDED" {
					t.Errorf("got %q %q", s.APIKey.Reveal(), s.Freq)
				}
			},
		},
		{
			name:  "local overlay merges mappings and replaces lists",
			main:  "allowlist: [10.0.0.0/8]\nprometheus:\n  enabled: true\n  listen_port: 1\n",
			local: "allowlist: [192.168.0.0/16]\nprometheus:\n  listen_port: 2\n",
			check: func(t *testing.T, s sample) {
				if !s.Nested.Enabled || s.Nested.Port != 2 || len(s.List) != 1 || s.List[0] != "192.168.0.0/16" {
					t.Errorf("bad merge: %+v", s)
				}
			},
		},
		{name: "unknown key", main: "api_urll: x\n", wantErr: "api_urll"},
		{name: "unknown key in overlay", main: "api_url: x\n", local: "bogus: 1\n", wantErr: "bogus"},
		{name: "undefined variable", main: "api_key: ${XDPG_NOT_SET_ANYWHERE}\n", wantErr: "XDPG_NOT_SET_ANYWHERE"},
		{name: "bad type", main: "prometheus:\n  listen_port: abc\n", wantErr: "abc"},
		{name: "not a mapping", main: "- a\n- b\n", wantErr: "mapping"},
		{name: "empty file", main: "", check: func(t *testing.T, s sample) {
			if s.Freq != "10s" {
				t.Error("defaults lost")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := write(t, dir, "c.yaml", tc.main)
			if tc.local != "" {
				write(t, dir, "c.yaml.local", tc.local)
			}
			s := sample{Freq: "10s"}
			s.Nested.Port = 60601
			err := Load(p, &s)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, s)
		})
	}
}

func TestSecretNeverPrints(t *testing.T) {
	s := sample{APIKey: "s3cret"}
	out, err := yaml.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "s3cret") || !strings.Contains(string(out), Redacted) {
		t.Errorf("yaml leaks or hides wrongly: %s", out)
	}
	if strings.Contains(s.APIKey.String(), "s3cret") {
		t.Error("String leaks")
	}
}

func TestExpandMissing(t *testing.T) {
	_, err := Expand([]byte("${XDPG_UNSET_1} ${XDPG_UNSET_2}"))
	if !errors.Is(err, ErrUndefinedVariable) {
		t.Fatalf("err = %v", err)
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "key", "  abc123 \n")
	s, err := ReadSecretFile(p)
	if err != nil || s.Reveal() != "abc123" {
		t.Fatalf("%q %v", s.Reveal(), err)
	}
	if _, err := ReadSecretFile(write(t, dir, "empty", "\n")); err == nil {
		t.Error("empty secret file accepted")
	}
}

func TestSecretInSlog(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, nil))
	log.Info("x", "key", Secret("s3cret"))
	if strings.Contains(buf.String(), "s3cret") || !strings.Contains(buf.String(), Redacted) {
		t.Errorf("slog output: %s", buf.String())
	}
}
