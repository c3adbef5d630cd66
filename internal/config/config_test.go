package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/configfile"
)

// minimal is the smallest valid file: everything else is defaulted.
const minimal = "api_key: test-key\n"

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func loadString(t *testing.T, body string) (*Config, error) {
	t.Helper()
	return Load(writeFile(t, t.TempDir(), "xdpgate.yaml", body))
}

// keys lists the dotted keys of a config struct type, from its yaml tags.
func keys(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		name, _ := yamlKey(t.Field(i))
		if name == "" {
			continue
		}
		ft := t.Field(i).Type
		if ft.Kind() == reflect.Struct && ft != durationType {
			out = append(out, keys(ft, prefix+name+".")...)
			continue
		}
		out = append(out, prefix+name)
	}
	return out
}

// fieldKeys returns the Key of every FieldError in err.
func fieldKeys(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		var fe *FieldError
		if errors.As(e, &fe) && fe == e {
			out = append(out, fe.Key)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

func TestDefaults(t *testing.T) {
	c, err := loadString(t, minimal)
	if err != nil {
		t.Fatal(err)
	}
	var tested []string
	for _, tc := range []struct {
		key       string
		got, want any
	}{
		{"api_url", c.APIURL, "http://127.0.0.1:8080/"},
		{"api_key", c.APIKey.Reveal(), "test-key"},
		{"api_key_file", c.APIKeyFile, ""},
		{"cert_path", c.CertPath, ""},
		{"key_path", c.KeyPath, ""},
		{"ca_cert_path", c.CACertPath, ""},
		{"insecure_skip_verify", c.InsecureSkipVerify, false},
		{"update_frequency", c.UpdateFrequency, 10 * time.Second},
		{"resync_interval", c.ResyncInterval, 5 * time.Minute},
		{"metrics_interval", c.MetricsInterval, 15 * time.Minute},
		{"supported_decisions_types", c.SupportedDecisionsTypes, []string{"ban"}},
		{"origins", c.Origins, []string(nil)},
		{"scopes", c.Scopes, []string{"ip", "range"}},
		{"scenarios_containing", c.ScenariosContaining, []string(nil)},
		{"scenarios_not_containing", c.ScenariosNotContaining, []string(nil)},
		{"disable_ipv6", c.DisableIPv6, false},
		{"min_prefix_v4", c.MinPrefixV4, 8},
		{"min_prefix_v6", c.MinPrefixV6, 16},
		{"allowlist", c.Allowlist, []netip.Prefix(nil)},
		{"mode", c.Mode, ModeXDP},
		{"interfaces", c.Interfaces, []string{"auto"}},
		{"xdp_mode", c.XDPMode, XDPModeAuto},
		{"pin_path", c.PinPath, "/sys/fs/bpf/xdpgate"},
		{"takeover", c.Takeover, false},
		{"count_only", c.CountOnly, false},
		{"maps.ipv4_exact", c.Maps.IPv4Exact, uint32(1048576)},
		{"maps.ipv6_exact", c.Maps.IPv6Exact, uint32(262144)},
		{"maps.ipv4_ranges", c.Maps.IPv4Ranges, uint32(65536)},
		{"maps.ipv6_ranges", c.Maps.IPv6Ranges, uint32(65536)},
		{"maps.allowlist", c.Maps.Allowlist, uint32(4096)},
		{"nftables.ipv4_table", c.NFTables.IPv4Table, "xdpgate"},
		{"nftables.ipv6_table", c.NFTables.IPv6Table, "xdpgate6"},
		{"nftables.hooks", c.NFTables.Hooks, []string{"input", "forward"}},
		{"nftables.priority", c.NFTables.Priority, int32(-10)},
		{"log_level", c.LogLevel, "info"},
		{"log_format", c.LogFormat, "text"},
		{"prometheus.enabled", c.Prometheus.Enabled, true},
		{"prometheus.listen_addr", c.Prometheus.ListenAddr, "127.0.0.1"},
		{"prometheus.listen_port", c.Prometheus.ListenPort, 60601},
	} {
		tested = append(tested, tc.key)
		t.Run(tc.key, func(t *testing.T) {
			if !reflect.DeepEqual(tc.got, tc.want) {
				t.Errorf("%s = %#v, want %#v", tc.key, tc.got, tc.want)
			}
		})
	}
	if all := keys(reflect.TypeFor[Config](), ""); !slices.Equal(tested, all) {
		t.Errorf("the table covers %q,\nthe struct has %q", tested, all)
	}
	// Helpers derived from the defaults.
	if !c.AutoInterfaces() || c.SlogLevel() != slog.LevelInfo || c.PrometheusAddr() != "127.0.0.1:60601" {
		t.Errorf("AutoInterfaces %v, SlogLevel %v, PrometheusAddr %q", c.AutoInterfaces(), c.SlogLevel(), c.PrometheusAddr())
	}
}

// TestEveryKeyDocumented keeps the full example and the reference
// documentation in step with the struct.
func TestEveryKeyDocumented(t *testing.T) {
	all := keys(reflect.TypeFor[Config](), "")
	example, err := os.ReadFile("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, example) {
		t.Error("docs/configuration.md does not hold testdata/full.yaml verbatim")
	}
	for _, k := range all {
		leaf := k[strings.LastIndex(k, ".")+1:]
		if !regexp.MustCompile(`(?m)^\s*(# )?` + regexp.QuoteMeta(leaf) + `:`).Match(example) {
			t.Errorf("testdata/full.yaml does not show %s", k)
		}
		if !bytes.Contains(doc, []byte("| `"+k+"` |")) {
			t.Errorf("docs/configuration.md has no table row for %s", k)
		}
	}
}

func TestValidationErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		name    string
		body    string // replaces minimal when it sets api_key itself
		wantKey string
		wantMsg string
	}{
		{name: "api_url empty", body: `api_url: ""`, wantKey: "api_url"},
		{name: "api_url scheme", body: `api_url: ftp://lapi:8080/`, wantKey: "api_url"},
		{name: "api_url host", body: `api_url: "http://"`, wantKey: "api_url"},
		{name: "api_url unparsable", body: `api_url: "http://[::1"`, wantKey: "api_url"},
		{name: "no auth", body: "api_key: \"\"", wantKey: "api_key"},
		{name: "key and key file", body: "api_key_file: /run/key", wantKey: "api_key_file"},
		{name: "key and cert", body: "cert_path: /c\nkey_path: /k\napi_url: https://lapi/", wantKey: "cert_path"},
		{name: "cert without key", body: "api_key: \"\"\ncert_path: /c\napi_url: https://lapi/", wantKey: "key_path"},
		{name: "key without cert", body: "api_key: \"\"\nkey_path: /k\napi_url: https://lapi/", wantKey: "cert_path"},
		{name: "cert over http", body: "api_key: \"\"\ncert_path: /c\nkey_path: /k", wantKey: "api_url"},
		{name: "key with space", body: "api_key: \"abc def\"", wantKey: "api_key"},
		{
			name: "update_frequency zero", body: "update_frequency: 0s", wantKey: "update_frequency",
			wantMsg: `update_frequency: must be positive, got "0s"`,
		},
		{name: "update_frequency negative", body: "update_frequency: -1s", wantKey: "update_frequency"},
		{name: "update_frequency no unit", body: "update_frequency: 10", wantKey: "update_frequency"},
		{name: "update_frequency list", body: "update_frequency: [10s]", wantKey: "update_frequency"},
		{name: "update_frequency null", body: "update_frequency:", wantKey: "update_frequency"},
		{name: "resync_interval negative", body: "resync_interval: -5m", wantKey: "resync_interval"},
		{name: "resync_interval too short", body: "resync_interval: 1s", wantKey: "resync_interval"},
		{name: "metrics_interval too short", body: "metrics_interval: 10s", wantKey: "metrics_interval"},
		{name: "log_level", body: "log_level: trace", wantKey: "log_level"},
		{name: "log_format", body: "log_format: xml", wantKey: "log_format"},
		{name: "decision type", body: "supported_decisions_types: [ban, throttle]", wantKey: "supported_decisions_types[1]"},
		{name: "decision types empty", body: "supported_decisions_types: []", wantKey: "supported_decisions_types"},
		{name: "decision type twice", body: "supported_decisions_types: [ban, ban]", wantKey: "supported_decisions_types[1]"},
		{name: "scope", body: "scopes: [ip, country]", wantKey: "scopes[1]"},
		{name: "scopes empty", body: "scopes: []", wantKey: "scopes"},
		{name: "origin empty", body: `origins: [crowdsec, ""]`, wantKey: "origins[1]"},
		{name: "scenarios_containing empty", body: `scenarios_containing: [""]`, wantKey: "scenarios_containing[0]"},
		{name: "scenarios_not_containing empty", body: `scenarios_not_containing: [" "]`, wantKey: "scenarios_not_containing[0]"},
		{name: "min_prefix_v4 zero", body: "min_prefix_v4: 0", wantKey: "min_prefix_v4"},
		{name: "min_prefix_v4 33", body: "min_prefix_v4: 33", wantKey: "min_prefix_v4"},
		{name: "min_prefix_v4 text", body: "min_prefix_v4: eight", wantKey: "min_prefix_v4"},
		{name: "min_prefix_v6 zero", body: "min_prefix_v6: 0", wantKey: "min_prefix_v6"},
		{name: "min_prefix_v6 129", body: "min_prefix_v6: 129", wantKey: "min_prefix_v6"},
		{name: "allowlist bad bits", body: "allowlist: [10.0.0.0/8, 10.0.0.0/33]", wantKey: "allowlist[1]"},
		{name: "allowlist garbage", body: "allowlist: [lan]", wantKey: "allowlist[0]"},
		{name: "allowlist zone", body: "allowlist: [\"fe80::1%eth0\"]", wantKey: "allowlist[0]"},
		{name: "allowlist mapping", body: "allowlist: {lan: 10.0.0.0/8}", wantKey: "allowlist"},
		{name: "allowlist nested list", body: "allowlist: [[10.0.0.0/8]]", wantKey: "allowlist[0]"},
		{name: "allowlist over map size", body: "maps: {allowlist: 1}\nallowlist: [10.0.0.0/8, 192.168.0.0/16]", wantKey: "allowlist"},
		{name: "mode", body: "mode: ebpf", wantKey: "mode"},
		{name: "xdp_mode", body: "xdp_mode: offload", wantKey: "xdp_mode"},
		{name: "interfaces empty", body: "interfaces: []", wantKey: "interfaces"},
		{name: "interfaces auto and names", body: "interfaces: [auto, eth0]", wantKey: "interfaces"},
		{name: "interface name too long", body: "interfaces: [eth0, averyverylongname0]", wantKey: "interfaces[1]"},
		{name: "interface name slash", body: "interfaces: [eth/0]", wantKey: "interfaces[0]"},
		{name: "interface twice", body: "interfaces: [eth0, eth0]", wantKey: "interfaces[1]"},
		{name: "pin_path relative", body: "pin_path: bpf/xdpgate", wantKey: "pin_path"},
		{name: "pin_path unclean", body: "pin_path: /sys/fs/bpf/../xdpgate", wantKey: "pin_path"},
		{name: "pin_path empty", body: `pin_path: ""`, wantKey: "pin_path"},
		{name: "pin_path root", body: `pin_path: /`, wantKey: "pin_path"},
		{name: "takeover not bool", body: "takeover: maybe", wantKey: "takeover"},
		{name: "count_only not bool", body: "count_only: 3", wantKey: "count_only"},
		{name: "disable_ipv6 not bool", body: "disable_ipv6: [true]", wantKey: "disable_ipv6"},
		{name: "insecure_skip_verify not bool", body: "insecure_skip_verify: sure", wantKey: "insecure_skip_verify"},
		{name: "maps scalar", body: "maps: 5", wantKey: "maps"},
		{name: "maps.ipv4_exact zero", body: "maps: {ipv4_exact: 0}", wantKey: "maps.ipv4_exact"},
		{name: "maps.ipv6_exact zero", body: "maps: {ipv6_exact: 0}", wantKey: "maps.ipv6_exact"},
		{name: "maps.ipv4_ranges zero", body: "maps: {ipv4_ranges: 0}", wantKey: "maps.ipv4_ranges"},
		{name: "maps.ipv6_ranges zero", body: "maps: {ipv6_ranges: 0}", wantKey: "maps.ipv6_ranges"},
		{name: "maps.allowlist zero", body: "maps: {allowlist: 0}", wantKey: "maps.allowlist"},
		{name: "maps.ipv4_exact negative", body: "maps: {ipv4_exact: -1}", wantKey: "maps.ipv4_exact"},
		{name: "maps.ipv4_exact overflow", body: "maps: {ipv4_exact: 4294967296}", wantKey: "maps.ipv4_exact"},
		{name: "nftables.ipv4_table", body: "nftables: {ipv4_table: \"my table\"}", wantKey: "nftables.ipv4_table"},
		{name: "nftables.ipv6_table", body: "nftables: {ipv6_table: \"\"}", wantKey: "nftables.ipv6_table"},
		{name: "nftables.hooks", body: "nftables: {hooks: [input, output]}", wantKey: "nftables.hooks[1]"},
		{name: "nftables.hooks empty", body: "nftables: {hooks: []}", wantKey: "nftables.hooks"},
		{name: "nftables.priority", body: "nftables: {priority: high}", wantKey: "nftables.priority"},
		{name: "prometheus.enabled", body: "prometheus: {enabled: 2}", wantKey: "prometheus.enabled"},
		{name: "prometheus.listen_addr", body: "prometheus: {listen_addr: localhost}", wantKey: "prometheus.listen_addr"},
		{name: "prometheus.listen_port zero", body: "prometheus: {listen_port: 0}", wantKey: "prometheus.listen_port"},
		{name: "prometheus.listen_port high", body: "prometheus: {listen_port: 65536}", wantKey: "prometheus.listen_port"},
		{name: "unknown key", body: "api_urll: http://x/", wantKey: "api_urll", wantMsg: "did you mean api_url?"},
		{name: "unknown nested key", body: "prometheus: {port: 1}", wantKey: "prometheus.port", wantMsg: "unknown key"},
		{name: "key twice", body: "log_level: info\nlog_level: debug", wantKey: "log_level", wantMsg: "more than once"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := minimal + tc.body + "\n"
			if strings.HasPrefix(tc.body, "api_key:") {
				body = tc.body + "\n"
			}
			_, err := loadString(t, body)
			if err == nil {
				t.Fatalf("loaded without error")
			}
			got := fieldKeys(err)
			if !slices.Equal(got, []string{tc.wantKey}) {
				t.Errorf("error names keys %q, want only %q; error:\n%v", got, tc.wantKey, err)
			}
			if !strings.Contains(err.Error(), tc.wantKey+": ") {
				t.Errorf("error %q does not start a line with %q", err, tc.wantKey+": ")
			}
			if tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Default()
	c.UpdateFrequency = 0
	c.LogLevel = "loud"
	c.Prometheus.ListenPort = 0
	got := fieldKeys(c.Validate())
	want := []string{"api_key", "update_frequency", "log_level", "prometheus.listen_port"}
	if !slices.Equal(got, want) {
		t.Errorf("keys %q, want %q", got, want)
	}
}

func TestValidValues(t *testing.T) {
	for _, tc := range []struct {
		name  string
		body  string
		check func(*Config) bool
	}{
		{"interfaces as one name", "interfaces: eth0", func(c *Config) bool {
			return slices.Equal(c.Interfaces, []string{"eth0"}) && !c.AutoInterfaces()
		}},
		{"interfaces auto as a scalar", "interfaces: auto", func(c *Config) bool { return c.AutoInterfaces() }},
		{"interface names", "interfaces: [eth0, bond0.100, enp3s0f1]", func(c *Config) bool { return len(c.Interfaces) == 3 }},
		{"resync disabled", "resync_interval: 0", func(c *Config) bool { return c.ResyncInterval == 0 }},
		{"usage metrics disabled", "metrics_interval: 0", func(c *Config) bool { return c.MetricsInterval == 0 }},
		{"compound duration", "update_frequency: 1m30s", func(c *Config) bool { return c.UpdateFrequency == 90*time.Second }},
		{"captcha", "supported_decisions_types: [captcha]", func(c *Config) bool { return c.SupportedDecisionsTypes[0] == "captcha" }},
		{"cert auth", "api_key: \"\"\ncert_path: /c.pem\nkey_path: /k.pem\nca_cert_path: /ca.pem\napi_url: https://lapi:8080/",
			func(c *Config) bool { return c.APIKey == "" && c.CertPath == "/c.pem" }},
		{"nested null keeps defaults", "prometheus:", func(c *Config) bool { return c.Prometheus.ListenPort == 60601 }},
		{"nested partial keeps defaults", "maps: {ipv4_exact: 100}", func(c *Config) bool {
			return c.Maps.IPv4Exact == 100 && c.Maps.IPv6Exact == 262144
		}},
		{"debug level", "log_level: debug", func(c *Config) bool { return c.SlogLevel() == slog.LevelDebug }},
		{"listen on v6", "prometheus: {listen_addr: \"::\", listen_port: 9100}", func(c *Config) bool {
			return c.PrometheusAddr() == "[::]:9100"
		}},
		{"prerouting", "nftables: {hooks: [prerouting], priority: -300}", func(c *Config) bool {
			return c.NFTables.Priority == -300
		}},
		{"yaml anchors", "origins: &o [crowdsec, cscli]\nscenarios_containing: *o", func(c *Config) bool {
			return slices.Equal(c.ScenariosContaining, []string{"crowdsec", "cscli"})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := minimal + tc.body + "\n"
			if strings.HasPrefix(tc.body, "api_key:") {
				body = tc.body + "\n"
			}
			c, err := loadString(t, body)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Errorf("unexpected result: %+v", c)
			}
		})
	}
}

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"192.0.2.1", "192.0.2.1/32"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"2001:db8::1/32", "2001:db8::/32"},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"::ffff:192.0.2.0/120", "192.0.2.0/24"},
		{"0.0.0.0/0", "0.0.0.0/0"},
		{"::ffff:0:0/64", ""},
		{"192.0.2.1/33", ""},
		{"fe80::1%eth0", ""},
		{"", ""},
		{"example.com", ""},
	} {
		got, err := ParsePrefix(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("ParsePrefix(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestOverlay(t *testing.T) {
	for _, tc := range []struct {
		name, main, local string
		check             func(*testing.T, *Config)
		wantKey           string
	}{
		{
			name:  "nested keys merge, lists replace",
			main:  minimal + "allowlist: [10.0.0.0/8, 192.168.0.0/16]\nprometheus: {listen_addr: 0.0.0.0, listen_port: 9000}\n",
			local: "allowlist: [172.16.0.0/12]\nprometheus: {listen_port: 9100}\n",
			check: func(t *testing.T, c *Config) {
				if c.Prometheus.ListenAddr != "0.0.0.0" || c.Prometheus.ListenPort != 9100 || !c.Prometheus.Enabled {
					t.Errorf("prometheus = %+v", c.Prometheus)
				}
				if len(c.Allowlist) != 1 || c.Allowlist[0] != netip.MustParsePrefix("172.16.0.0/12") {
					t.Errorf("allowlist = %v", c.Allowlist)
				}
			},
		},
		{
			name:  "overlay sets the key",
			main:  "api_url: http://lapi:8080/\n",
			local: "api_key: from-overlay\n",
			check: func(t *testing.T, c *Config) {
				if c.APIKey.Reveal() != "from-overlay" || c.APIURL != "http://lapi:8080/" {
					t.Errorf("got %q %q", c.APIKey.Reveal(), c.APIURL)
				}
			},
		},
		{name: "overlay error names key", main: minimal, local: "update_frequency: 0s\n", wantKey: "update_frequency"},
		{name: "overlay unknown key", main: minimal, local: "maps: {ipv4: 1}\n", wantKey: "maps.ipv4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := writeFile(t, dir, "xdpgate.yaml", tc.main)
			writeFile(t, dir, "xdpgate.yaml.local", tc.local)
			c, err := Load(p)
			if tc.wantKey != "" {
				if got := fieldKeys(err); !slices.Equal(got, []string{tc.wantKey}) {
					t.Fatalf("error keys %q, want %q (err %v)", got, tc.wantKey, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("XDPGATE_TEST_KEY", "k3y-from-env")
	t.Setenv("XDPGATE_TEST_NODE_IP", "192.0.2.10")
	c, err := loadString(t, "api_key: ${XDPGATE_TEST_KEY}\nprometheus:\n  listen_addr: ${XDPGATE_TEST_NODE_IP}\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.APIKey.Reveal() != "k3y-from-env" || c.Prometheus.ListenAddr != "192.0.2.10" {
		t.Errorf("got key %q addr %q", c.APIKey.Reveal(), c.Prometheus.ListenAddr)
	}

	_, err = loadString(t, "api_key: ${XDPGATE_TEST_UNSET_VARIABLE}\n")
	if !errors.Is(err, configfile.ErrUndefinedVariable) || !strings.Contains(err.Error(), "XDPGATE_TEST_UNSET_VARIABLE") {
		t.Errorf("undefined variable: err = %v", err)
	}
}

func TestAPIKeyFile(t *testing.T) {
	dir := t.TempDir()
	keyPath := writeFile(t, dir, "api-key", "0123456789abcdef\n")
	c, err := loadString(t, "api_key_file: "+keyPath+"\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.APIKey.Reveal() != "0123456789abcdef" || c.APIKeyFile != keyPath {
		t.Errorf("key %q file %q", c.APIKey.Reveal(), c.APIKeyFile)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("a loaded config no longer validates: %v", err)
	}

	for _, tc := range []struct{ name, path string }{
		{"missing", filepath.Join(dir, "nope")},
		{"empty", writeFile(t, dir, "empty", "\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadString(t, "api_key_file: "+tc.path+"\n")
			if got := fieldKeys(err); !slices.Equal(got, []string{"api_key_file"}) {
				t.Errorf("error keys %q (err %v)", got, err)
			}
		})
	}
	_, err = loadString(t, "api_key_file: "+filepath.Join(dir, "nope")+"\n")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing key file: err = %v, want fs.ErrNotExist", err)
	}
}

func TestMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want fs.ErrNotExist", err)
	}
}

func TestKeyNeverPrinted(t *testing.T) {
	const secret = "S3CRET-bouncer-key"
	dir := t.TempDir()
	keyPath := writeFile(t, dir, "api-key", secret+"\n")
	for _, tc := range []struct{ name, body string }{
		{"inline", "api_key: " + secret + "\n"},
		{"file", "api_key_file: " + keyPath + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := loadString(t, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			if c.APIKey.Reveal() != secret {
				t.Fatalf("key not loaded: %q", c.APIKey.Reveal())
			}
			var dump bytes.Buffer
			if err := c.Dump(&dump); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			slog.New(slog.NewTextHandler(&logs, nil)).Info("config", "cfg", c)
			slog.New(slog.NewJSONHandler(&logs, nil)).Info("config", "cfg", c)
			js, err := json.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			for name, out := range map[string]string{
				"Dump": dump.String(),
				"%v":   fmt.Sprintf("%v", c), "%+v": fmt.Sprintf("%+v", c), "%#v": fmt.Sprintf("%#v", c),
				"value %v": fmt.Sprintf("%v", *c), "value %+v": fmt.Sprintf("%+v", *c),
				"slog": logs.String(), "json": string(js),
			} {
				if strings.Contains(out, secret) {
					t.Errorf("%s prints the key:\n%s", name, out)
				}
			}
			hasKeyLine := strings.Contains(dump.String(), "api_key: "+configfile.Redacted)
			if want := tc.name == "inline"; hasKeyLine != want {
				t.Errorf("Dump shows redacted api_key: %v, want %v:\n%s", hasKeyLine, want, dump.String())
			}
		})
	}
}

func TestDumpLoadsAgain(t *testing.T) {
	t.Setenv("XDPGATE_API_KEY", "env-key")
	dir := t.TempDir()
	keyPath := writeFile(t, dir, "api-key", "file-key\n")
	for _, tc := range []struct{ name, body string }{
		{"defaults", "api_key_file: " + keyPath + "\n"},
		{"full example", ""},
		{"odd values", "api_key_file: " + keyPath + "\nupdate_frequency: 1h2m3.5s\nresync_interval: 0s\n" +
			"allowlist: [192.0.2.7, 2001:db8::/48, \"::ffff:198.51.100.0/120\"]\ninterfaces: eth1\n" +
			"origins: [\"CAPI\", 'lists:firehol']\nscenarios_not_containing: ['http-probing']\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c *Config
			var err error
			if tc.body == "" {
				c, err = Load("testdata/full.yaml")
			} else {
				c, err = loadString(t, tc.body)
			}
			if err != nil {
				t.Fatal(err)
			}
			var dump bytes.Buffer
			if err := c.Dump(&dump); err != nil {
				t.Fatal(err)
			}
			again, err := loadString(t, dump.String())
			if err != nil {
				t.Fatalf("Dump output does not load: %v\n%s", err, dump.String())
			}
			if !c.keyFromFile {
				// An inline key comes back redacted: put it back to compare.
				if again.APIKey != configfile.Redacted {
					t.Errorf("inline key came back as %q", again.APIKey.Reveal())
				}
				again.APIKey = c.APIKey
			}
			if !reflect.DeepEqual(c, again) {
				t.Errorf("round trip changed the config:\nbefore %+v\nafter  %+v\ndump:\n%s", c, again, dump.String())
			}
		})
	}
}

func TestFullExample(t *testing.T) {
	t.Setenv("XDPGATE_API_KEY", "env-key")
	c, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.APIKey = "env-key"
	want.SupportedDecisionsTypes = []string{"ban", "captcha"}
	for _, p := range []string{"127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "::1/128", "fc00::/7"} {
		want.Allowlist = append(want.Allowlist, netip.MustParsePrefix(p))
	}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("testdata/full.yaml:\n got %+v\nwant %+v", *c, want)
	}
}
