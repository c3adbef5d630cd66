package main

// End-to-end tests of the agent against a real CrowdSec LAPI: both run in a
// fresh "host" network namespace, the agent as a real process (this test
// binary re-executed as xdpgate), attached to the veth the client
// namespace sends real packets through.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/lapitest"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// TestMain lets the test binary act as xdpgate when re-executed.
func TestMain(m *testing.M) {
	if os.Getenv("XDPGATE_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

type harness struct {
	t      testing.TB
	tp     *testutil.Topology
	lapi   *lapitest.LAPI
	key    string
	pin    string
	config string
	port   int

	agentProc
}

const updateFrequency = 500 * time.Millisecond

// resyncInterval is short: LAPI 1.4.6 stamps a decision's created_at
// before its insert commits, so a stream pull that runs during the insert
// misses it for good (the next pull asks for newer ones). The periodic
// full resync is what repairs that, in production every few minutes.
const resyncInterval = 3 * time.Second

func newHarness(t testing.TB, extra string) *harness {
	t.Helper()
	return newHarnessWith(t, updateFrequency, resyncInterval, extra)
}

func newHarnessWith(t testing.TB, update, resync time.Duration, extra string) *harness {
	t.Helper()
	testutil.Privileged(t)
	h := &harness{t: t, tp: testutil.NewTopology(t), port: 60601, agentProc: agentProc{t: t, name: "agent"}}
	h.lapi = lapitest.StartInNetNS(t, h.tp.Host.Name)
	h.key = h.lapi.AddBouncer(t, "xdpgate-test")
	var b [4]byte
	_, _ = rand.Read(b[:])
	h.pin = filepath.Join("/sys/fs/bpf", "xdpgate-agent-"+hex.EncodeToString(b[:]))
	if err := loader.EnsureBPFFS(h.pin); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h.config = filepath.Join(dir, "xdpgate.yaml")
	cfg := fmt.Sprintf(`api_url: %s
api_key: %s
update_frequency: %s
resync_interval: %s
interfaces: [veth0]
xdp_mode: native
pin_path: %s
supported_decisions_types: [ban]
allowlist: [10.99.0.200/32]
nftables:
  ipv4_table: xdpgate_test
  ipv6_table: xdpgate6_test
prometheus:
  enabled: true
  listen_addr: 127.0.0.1
  listen_port: %d
%s`, h.lapi.URL(), h.key, update, resync, h.pin, h.port, extra)
	if err := os.WriteFile(h.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.stop()
		out := h.xdpgate("uninstall")
		if _, err := os.Stat(h.pin); err == nil {
			t.Errorf("pins left after uninstall: %s", out)
		}
	})
	return h
}

// start runs the agent in the host namespace.
func (h *harness) start() {
	h.t.Helper()
	h.agentProc.start(h.tp.Host, h.config)
}

// xdpgate runs a CLI command (in-process, in the host namespace) against
// the agent's pins.
func (h *harness) xdpgate(args ...string) string {
	out, _ := h.xdpgateCode(args...)
	return out
}

func (h *harness) xdpgateCode(args ...string) (string, int) {
	var out bytes.Buffer
	var code int
	_ = h.tp.Host.Do(func() error {
		code = run(append(args, "-c", h.config), &out, &out)
		return nil
	})
	return out.String(), code
}

// check returns whether the maps drop addr.
func (h *harness) check(addr string) maps.Verdict {
	h.t.Helper()
	pm, err := loader.OpenPinnedMaps(h.pin)
	if err != nil {
		h.t.Fatal(err)
	}
	defer pm.Close()
	m, err := maps.New(pm)
	if err != nil {
		h.t.Fatal(err)
	}
	res, err := m.Check(netip.MustParseAddr(addr))
	if err != nil {
		h.t.Fatal(err)
	}
	return res.Verdict
}

// waitVerdict waits until addr gets the verdict, within an update interval
// plus the time LAPI and the agent take.
func (h *harness) waitVerdict(addr string, want maps.Verdict) time.Duration {
	h.t.Helper()
	start := time.Now()
	testutil.WaitFor(h.t, 3*updateFrequency+2*resyncInterval, fmt.Sprintf("%s to be %s", addr, want), func() bool {
		return h.check(addr) == want
	})
	return time.Since(start)
}

// delivered sends n datagrams from src and returns how many arrived.
func (h *harness) delivered(r *testutil.Receiver, src string, n int) int {
	h.t.Helper()
	before := r.Count(src)
	h.tp.Send(h.t, src, n)
	time.Sleep(150 * time.Millisecond)
	return r.Count(src) - before
}

func (h *harness) readyz() (int, string) {
	resp, err := testutil.HTTPClientIn(h.tp.Host.Name).Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", h.port))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAgentDecisions(t *testing.T) {
	h := newHarness(t, "")
	h.lapi.AddDecision(t, "--ip", "10.99.0.4", "--duration", "1h") // before start: in the startup set
	h.start()
	r := h.tp.Listen(t)

	if got := h.check("10.99.0.4"); got != maps.VerdictDrop {
		t.Fatalf("startup set: 10.99.0.4 is %s", got)
	}
	for _, tc := range []struct {
		name    string
		add     []string
		src     string
		deleted []string
	}{
		{"ipv4", []string{"--ip", "10.99.0.2"}, "10.99.0.2", []string{"--ip", "10.99.0.2"}},
		{"ipv6", []string{"--ip", "fd00:99::2"}, "fd00:99::2", []string{"--ip", "fd00:99::2"}},
		{"range", []string{"--range", "10.99.0.0/30"}, "10.99.0.3", []string{"--range", "10.99.0.0/30"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := h.delivered(r, tc.src, 5); n != 5 {
				t.Fatalf("before the ban: %d of 5 arrived", n)
			}
			h.lapi.AddDecision(t, append(tc.add, "--duration", "1h")...)
			took := h.waitVerdict(tc.src, maps.VerdictDrop)
			if n := h.delivered(r, tc.src, 20); n != 0 {
				t.Errorf("banned: %d of 20 datagrams from %s arrived", n, tc.src)
			}
			h.lapi.DeleteDecisions(t, tc.deleted...)
			h.waitVerdict(tc.src, maps.VerdictPass)
			if n := h.delivered(r, tc.src, 5); n != 5 {
				t.Errorf("after the delete: %d of 5 arrived", n)
			}
			t.Logf("%s: enforced %v after cscli returned", tc.name, took.Round(time.Millisecond))
		})
	}

	t.Run("captcha not enforced unless configured", func(t *testing.T) {
		h.lapi.AddDecision(t, "--ip", "10.99.0.3", "--type", "captcha", "--duration", "1h")
		time.Sleep(3 * updateFrequency)
		if got := h.check("10.99.0.3"); got != maps.VerdictPass {
			t.Errorf("captcha decision enforced with supported_decisions_types [ban]: %s", got)
		}
		h.lapi.DeleteDecisions(t, "--ip", "10.99.0.3")
	})

	t.Run("two decisions on one IP", func(t *testing.T) {
		// Two detections of one attacker, from two origins; cscli would
		// replace the first with the second, an agent's alerts do not.
		h.lapi.PostAlert(t,
			lapitest.Alert{Origin: "crowdsec", Value: "10.99.0.2", Duration: "1h", Scenario: "test/first"},
			lapitest.Alert{Origin: "CAPI", Value: "10.99.0.2", Duration: "2h", Scenario: "test/second"},
		)
		h.waitVerdict("10.99.0.2", maps.VerdictDrop)
		out := h.lapi.Cscli(t, "decisions", "list", "--ip", "10.99.0.2", "-o", "raw")
		var firstID string
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "test/first") {
				firstID = strings.SplitN(line, ",", 2)[0]
			}
		}
		if firstID == "" {
			t.Fatalf("decision not found in:\n%s", out)
		}
		h.lapi.Cscli(t, "decisions", "delete", "--id", firstID)
		time.Sleep(3 * updateFrequency)
		if got := h.check("10.99.0.2"); got != maps.VerdictDrop {
			t.Fatalf("deleting one of two decisions unbanned the IP: %s", got)
		}
		if n := h.delivered(r, "10.99.0.2", 10); n != 0 {
			t.Errorf("%d datagrams arrived", n)
		}
		h.lapi.DeleteDecisions(t, "--ip", "10.99.0.2")
		h.waitVerdict("10.99.0.2", maps.VerdictPass)
	})

	t.Run("short duration expires", func(t *testing.T) {
		h.lapi.AddDecision(t, "--ip", "10.99.0.3", "--duration", "3s")
		h.waitVerdict("10.99.0.3", maps.VerdictDrop)
		testutil.WaitFor(t, 10*time.Second, "the ban to expire", func() bool { return h.delivered(r, "10.99.0.3", 1) == 1 })
	})

	t.Run("cli", func(t *testing.T) {
		out := h.xdpgate("check", "10.99.0.4")
		if !strings.Contains(out, "DROP") || !strings.Contains(out, "cscli") {
			t.Errorf("check: %s", out)
		}
		out = h.xdpgate("status")
		for _, want := range []string{"veth0", "native", "bans_v4", "last LAPI pull"} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		if out := h.xdpgate("list", "--v4"); !strings.Contains(out, "10.99.0.4/32") {
			t.Errorf("list: %s", out)
		}
	})

	// LAPI 1.4.6 has no usage metrics endpoint: said once, not an error.
	if n := strings.Count(h.logText(), "no usage metrics endpoint"); n != 1 {
		t.Errorf("the missing usage metrics endpoint was logged %d times, want once", n)
	}
}

func TestAgentCaptchaMapped(t *testing.T) {
	h := newHarness(t, "")
	cfg, _ := os.ReadFile(h.config)
	cfg = bytes.Replace(cfg, []byte("supported_decisions_types: [ban]"), []byte("supported_decisions_types: [ban, captcha]"), 1)
	if err := os.WriteFile(h.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	h.start()
	h.lapi.AddDecision(t, "--ip", "10.99.0.3", "--type", "captcha", "--duration", "1h")
	h.waitVerdict("10.99.0.3", maps.VerdictDrop)
}

// TestAgentLAPIOutage stops the LAPI: bans hold, the agent stays up and
// says it is not ready; when LAPI is back, new decisions arrive.
func TestAgentLAPIOutage(t *testing.T) {
	h := newHarness(t, "")
	h.lapi.AddDecision(t, "--ip", "10.99.0.2", "--duration", "1h")
	h.start()
	r := h.tp.Listen(t)
	if code, body := h.readyz(); code != http.StatusOK {
		t.Fatalf("readyz before the outage: %d %s", code, body)
	}
	h.lapi.Stop(t)
	testutil.WaitFor(t, 30*time.Second, "readiness to report the outage", func() bool {
		code, _ := h.readyz()
		return code == http.StatusServiceUnavailable
	})
	if n := h.delivered(r, "10.99.0.2", 20); n != 0 {
		t.Errorf("LAPI down: %d datagrams from the banned source arrived", n)
	}
	_, body := h.readyz()
	t.Logf("readyz during the outage: %s", strings.TrimSpace(body))
	h.lapi.Start(t)
	h.lapi.AddDecision(t, "--ip", "10.99.0.3", "--duration", "1h")
	testutil.WaitFor(t, 30*time.Second, "the new decision after LAPI came back", func() bool {
		return h.check("10.99.0.3") == maps.VerdictDrop
	})
	if got := h.check("10.99.0.2"); got != maps.VerdictDrop {
		t.Errorf("old ban lost over the outage: %s", got)
	}
}

// TestAgentRestartUnderFire restarts the agent while a banned source sends
// without pause: none of its packets may get through.
func TestAgentRestartUnderFire(t *testing.T) {
	h := newHarness(t, "")
	h.lapi.AddDecision(t, "--ip", "10.99.0.2", "--duration", "1h")
	h.start()
	r := h.tp.Listen(t)
	n := h.restartUnderFire("10.99.0.2", nil)
	if got := r.Count("10.99.0.2"); got != 0 {
		t.Fatalf("%d of %d datagrams from the banned source got through two restarts", got, n)
	}
	t.Logf("0 of %d datagrams got through two agent restarts", n)
}

// TestAgent100k imports 100k decisions: all are enforced, and a sample
// checked with the CLI agrees.
func TestAgent100k(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	h := newHarness(t, "")
	rows := make([]lapitest.ImportRow, 0, 100_000)
	for i := 0; i < 100_000; i++ {
		rows = append(rows, lapitest.ImportRow{Value: fmt.Sprintf("100.%d.%d.%d", 64+i>>16, (i>>8)&0xff, i&0xff)})
	}
	h.lapi.Import(t, rows)
	start := time.Now()
	h.start()
	t.Logf("agent up with 100k decisions in %v", time.Since(start).Round(time.Millisecond))
	out := h.xdpgate("status", "--json")
	if !strings.Contains(out, `"entries": 100000`) {
		t.Errorf("status after importing 100k:\n%s", out)
	}
	for _, i := range []int{0, 1, 4242, 65535, 65536, 99_999} {
		addr := fmt.Sprintf("100.%d.%d.%d", 64+i>>16, (i>>8)&0xff, i&0xff)
		if out, code := h.xdpgateCode("check", addr); code != 0 {
			t.Errorf("check %s: exit %d, %s", addr, code, out)
		}
	}
	if out, code := h.xdpgateCode("check", "100.200.0.1"); code != 1 {
		t.Errorf("check of an address not banned: exit %d, %s", code, out)
	}
}

// restartUnderFire restarts the agent twice, with a moment without any
// agent each time, while src sends to the host without pause; after each
// restart it calls after (when not nil). It returns how many datagrams
// src sent.
func (h *harness) restartUnderFire(src string, after func(restart int)) int {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan int)
	go func() {
		n := 0
		for ctx.Err() == nil {
			if err := h.tp.TrySend(src, 10, 100*time.Microsecond); err == nil {
				n += 10
			}
		}
		sent <- n
	}()
	for i := 1; i <= 2; i++ {
		h.stop()
		time.Sleep(300 * time.Millisecond) // no agent at all for a moment
		h.start()
		if after != nil {
			after(i)
		}
	}
	cancel()
	n := <-sent
	time.Sleep(200 * time.Millisecond) // what is in flight arrives
	return n
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t testing.TB, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
