package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/xdpgate/xdpgate/internal/cffake"
	"github.com/xdpgate/xdpgate/internal/edgesync"
	"github.com/xdpgate/xdpgate/internal/lapitest"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{nil, exitUsage, "usage"},
		{[]string{"frobnicate"}, exitUsage, "unknown command"},
		{[]string{"version"}, exitOK, "edgesync "},
		{[]string{"help"}, exitOK, "edgesync run"},
		{[]string{"run", "--bogus"}, exitUsage, "flag provided but not defined"},
		{[]string{"run", "-c", "testdata/valid.yaml", "extra"}, exitUsage, "unexpected argument"},
		{[]string{"run", "-c", "testdata/does-not-exist.yaml", "-t"}, exitError, "no such file"},
	} {
		code, out, errs := runCmd(t, tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.out) {
			t.Errorf("%v: code %d, output %q%q", tc.args, code, out, errs)
		}
	}
}

func setTestEnv(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cf-token"), []byte("cf-token-from-file-7d3a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EDGESYNC_TEST_DIR", dir)
	t.Setenv("EDGESYNC_TEST_LAPI_KEY", "lapi-key-from-env-9c1b")
	return dir
}

func TestCheckConfig(t *testing.T) {
	setTestEnv(t)
	code, out, errs := runCmd(t, "run", "-c", "testdata/valid.yaml", "-t")
	if code != exitOK || !strings.Contains(out, "configuration OK") {
		t.Fatalf("valid: %d %q %q", code, out, errs)
	}
	cfg, err := edgesync.LoadConfig("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cloudflare.APIToken.Reveal() != "cf-token-from-file-7d3a" || cfg.APIKey.Reveal() != "lapi-key-from-env-9c1b" ||
		!slices.Equal(cfg.Cloudflare.Zones[0].ExcludeHosts, []string{"auth.example.com", "login.example.com"}) ||
		!slices.Equal(cfg.SupportedDecisionsTypes, []string{"ban", "captcha"}) || cfg.IPv6Prefix != 56 {
		t.Errorf("loaded %+v", cfg)
	}

	code, _, errs = runCmd(t, "run", "-c", "testdata/invalid.yaml", "-t")
	if code != exitError {
		t.Fatalf("invalid: %d", code)
	}
	for _, want := range []string{
		`api_url "ftp://lapi/"`, "set api_key, api_key_file", "update_frequency 10ms", "origins is empty",
		"ipv6_prefix 96", "max_items 0", "max_delete_ratio 1.5", "sync_interval 1s", `log_level "loud"`,
		"cloudflare.account_id is empty", "cloudflare.api_token", "cloudflare.list_name", `"*.example.com" is not a host name`,
		"zone z is listed twice", "zones[2]: zone_id is empty",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("invalid config: error lacks %q:\n%s", want, errs)
		}
	}

	code, _, errs = runCmd(t, "run", "-c", "testdata/unknown-key.yaml", "-t")
	if code != exitError || !strings.Contains(errs, "zone") || !strings.Contains(errs, "not found") {
		t.Errorf("unknown key: %d %s", code, errs)
	}

	t.Setenv("EDGESYNC_TEST_DIR", "/nonexistent")
	if code, _, errs := runCmd(t, "run", "-c", "testdata/valid.yaml", "-t"); code != exitError || !strings.Contains(errs, "api_token_file") {
		t.Errorf("missing token file: %d %s", code, errs)
	}
}

func TestDumpConfigRedactsSecrets(t *testing.T) {
	dir := setTestEnv(t)
	path := filepath.Join(dir, "inline.yaml")
	if err := os.WriteFile(path, []byte("api_key: inline-lapi-key-5e2f\ncloudflare:\n  account_id: a\n  api_token: inline-cf-token-88aa\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, "testdata/valid.yaml"} {
		code, out, errs := runCmd(t, "run", "-c", p, "-T")
		if code != exitOK {
			t.Fatalf("%s: %d %s", p, code, errs)
		}
		for _, secret := range []string{"inline-lapi-key-5e2f", "inline-cf-token-88aa", "cf-token-from-file-7d3a", "lapi-key-from-env-9c1b"} {
			if strings.Contains(out, secret) {
				t.Fatalf("%s: -T printed a secret:\n%s", p, out)
			}
		}
		if p == path && strings.Count(out, "<redacted>") != 2 {
			t.Errorf("inline secrets not shown as <redacted>:\n%s", out)
		}
		if p != path && (!strings.Contains(out, "api_token_file: "+dir+"/cf-token") || !strings.Contains(out, "sync_interval: 1m0s")) {
			t.Errorf("merged config:\n%s", out)
		}
		// The output is a configuration again.
		again := filepath.Join(dir, "again.yaml")
		if err := os.WriteFile(again, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := edgesync.ReadConfig(again); err != nil {
			t.Errorf("-T output does not read back: %v\n%s", err, out)
		}
	}
}

// The configuration shipped in deploy/ must read with this binary's keys.
func TestDeployConfigReads(t *testing.T) {
	const path = "../../deploy/kubernetes/config/edgesync.yaml"
	if _, err := os.Stat(path); err != nil {
		t.Skipf("no %s", path)
	}
	cfg, err := edgesync.ReadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.APIKey, cfg.APIKeyFile = "x", ""
	cfg.Cloudflare.APIToken, cfg.Cloudflare.APITokenFile = "x", ""
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestRunOnceEndToEnd drives the command as the CronJob does, against a
// real LAPI and the fake Cloudflare API.
func TestRunOnceEndToEnd(t *testing.T) {
	l := lapitest.Start(t)
	const token = "cf-e2e-token-31f5c0"
	fake := cffake.New(t, cffake.Options{Token: token, Zones: []string{"zone1"}})
	key := l.AddBouncer(t, "edgesync")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("E2E_LAPI_KEY", key)
	cfgPath := filepath.Join(dir, "edgesync.yaml")
	cfg := fmt.Sprintf(`api_url: %s
api_key: ${E2E_LAPI_KEY}
log_level: debug
cloudflare:
  account_id: %s
  api_token_file: %s
  base_url: %s
  zones:
    - zone_id: zone1
      exclude_hosts: [auth.example.com]
`, l.URL(), fake.AccountID(), filepath.Join(dir, "token"), fake.URL())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	l.AddDecision(t, "--ip", "192.0.2.1", "--type", "ban", "--duration", "4h")
	l.AddDecision(t, "--ip", "192.0.2.2", "--type", "captcha", "--duration", "4h")
	l.AddDecision(t, "--range", "2001:db8:7::/48", "--type", "ban", "--duration", "4h")

	listed := func() []string {
		var out []string
		for _, it := range fake.Items("crowdsec_ban") {
			out = append(out, it.IP)
		}
		slices.Sort(out)
		return out
	}
	var allErr strings.Builder
	check := func(name string, code, want int, stdout, stderr string) {
		t.Helper()
		allErr.WriteString(stdout + stderr)
		if code != want {
			t.Fatalf("%s: exit %d, want %d\n%s%s", name, code, want, stdout, stderr)
		}
	}

	code, out, errs := runCmd(t, "run", "--once", "-c", cfgPath)
	check("first run", code, exitOK, out, errs)
	if got := listed(); !slices.Equal(got, []string{"192.0.2.1", "192.0.2.2", "2001:db8:7::/48"}) {
		t.Fatalf("list %v", got)
	}
	rs, _ := fake.Entrypoint("zone1", "http_request_firewall_custom")
	if len(rs.Rules) != 1 || rs.Rules[0].Expression != `(ip.src in $crowdsec_ban) and not (http.host in {"auth.example.com"})` {
		t.Fatalf("rules %+v", rs.Rules)
	}

	// Dry run after a change: the plan is printed, nothing is written.
	l.AddDecision(t, "--ip", "192.0.2.3", "--type", "ban", "--duration", "4h")
	fake.ResetCounts()
	code, out, errs = runCmd(t, "run", "--dry-run", "-c", cfgPath)
	check("dry run", code, exitOK, out, errs)
	if !strings.Contains(out, "+ 192.0.2.3\tcscli: ") || !strings.Contains(out, "zone zone1: rule unchanged") || fake.Writes() != 0 {
		t.Fatalf("dry run wrote %d times or printed:\n%s", fake.Writes(), out)
	}

	// The LAPI loses everything: the guard refuses, --force goes.
	l.DeleteDecisions(t, "--all")
	code, out, errs = runCmd(t, "run", "--once", "-c", cfgPath)
	check("guarded run", code, exitError, out, errs)
	if !strings.Contains(errs, "delete guard") || len(listed()) != 3 {
		t.Fatalf("guard: %v\n%s", listed(), errs)
	}
	code, out, errs = runCmd(t, "run", "--once", "--force", "-c", cfgPath)
	check("forced run", code, exitOK, out, errs)
	if got := listed(); len(got) != 0 {
		t.Fatalf("after --force: %v", got)
	}
	if s := allErr.String(); strings.Contains(s, token) || strings.Contains(s, key) {
		t.Fatal("a secret reached the output")
	}
}
