package main

// Fleet tests: several agents on one real CrowdSec LAPI (1.4.6), each in a
// network namespace of its own joined to the LAPI's by a veth pair, so that
// every agent reaches the LAPI from its own address as nodes do; and one
// agent behind a proxy that plays a Service in front of LAPI replicas.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/xdpgate/xdpgate/internal/agent"
	"github.com/xdpgate/xdpgate/internal/config"
	"github.com/xdpgate/xdpgate/internal/lapitest"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

const (
	fleetUpdate = 500 * time.Millisecond
	fleetResync = 3 * time.Second
	// fleetConverge is how long a change may take to reach every agent
	// with resyncs on: the longest jittered interval, a pull, and the
	// time to apply.
	fleetConverge = fleetResync*11/10 + 2*fleetUpdate + 2*time.Second
)

// fleetLab is a LAPI in a network namespace of its own, listening on every
// address there, and the agents connected to it.
type fleetLab struct {
	t    *testing.T
	ns   *testutil.NetNS
	lapi *lapitest.LAPI
	port string
	// scheme is "http", or "https" once enableTLS ran.
	scheme string
	tls    *fleetPKI
}

func newFleetLab(t *testing.T) *fleetLab {
	t.Helper()
	testutil.Privileged(t)
	lab := &fleetLab{t: t, ns: testutil.NewNetNS(t), scheme: "http"}
	lab.lapi = lapitest.StartInNetNS(t, lab.ns.Name)
	_, lab.port, _ = net.SplitHostPort(lab.lapi.Addr())
	// lapitest listens on the namespace's loopback; the agents come
	// through veths.
	lab.lapi.Stop(t)
	lab.editLAPIConfig("listen_uri: "+lab.lapi.Addr(), "listen_uri: 0.0.0.0:"+lab.port)
	lab.lapi.Start(t)
	return lab
}

func (lab *fleetLab) editLAPIConfig(old, new string) {
	lab.t.Helper()
	editFile(lab.t, lab.lapi.ConfigPath(), old, new)
}

func editFile(t testing.TB, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("%s holds no %q", path, old)
	}
	if err := os.WriteFile(path, bytes.Replace(b, []byte(old), []byte(new), 1), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fleetAgent is one agent process in its namespace, attached to veth0
// there, with its own pins.
type fleetAgent struct {
	t      *testing.T
	name   string
	ns     *testutil.NetNS
	pin    string
	config string

	agentProc
}

// agent adds agent number i (1-250): its namespace holds 10.98.i.2 on
// veth0, whose peer in the LAPI's namespace holds 10.98.i.1. auth is the
// YAML that authenticates it; resync its resync_interval.
func (lab *fleetLab) agent(i int, auth string, resync time.Duration) *fleetAgent {
	t := lab.t
	t.Helper()
	name := fmt.Sprintf("agent%d", i)
	a := &fleetAgent{t: t, name: name, ns: testutil.NewNetNS(t), agentProc: agentProc{t: t, name: name}}
	peer := fmt.Sprintf("vlapi%d", i)
	testutil.Run(t, "ip", "link", "add", "veth0", "netns", a.ns.Name, "type", "veth", "peer", "name", peer, "netns", lab.ns.Name)
	a.ns.Run(t, "ip", "addr", "add", fmt.Sprintf("10.98.%d.2/24", i), "dev", "veth0")
	a.ns.Run(t, "ip", "link", "set", "veth0", "up")
	lab.ns.Run(t, "ip", "addr", "add", fmt.Sprintf("10.98.%d.1/24", i), "dev", peer)
	lab.ns.Run(t, "ip", "link", "set", peer, "up")

	var b [4]byte
	_, _ = rand.Read(b[:])
	a.pin = filepath.Join("/sys/fs/bpf", "xdpgate-fleet-"+hex.EncodeToString(b[:]))
	if err := loader.EnsureBPFFS(a.pin); err != nil {
		t.Fatal(err)
	}
	a.config = filepath.Join(t.TempDir(), "xdpgate.yaml")
	cfg := fmt.Sprintf(`api_url: %s://10.98.%d.1:%s/
%s
update_frequency: %s
resync_interval: %s
interfaces: [veth0]
xdp_mode: native
pin_path: %s
supported_decisions_types: [ban]
prometheus:
  enabled: true
  listen_addr: 127.0.0.1
  listen_port: 60601
`, lab.scheme, i, lab.port, auth, fleetUpdate, resync, a.pin)
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.stop()
		var out bytes.Buffer
		_ = a.ns.Do(func() error {
			run([]string{"uninstall", "-c", a.config}, &out, &out)
			return nil
		})
		if _, err := os.Stat(a.pin); err == nil {
			t.Errorf("%s: pins left after uninstall: %s", a.name, out.String())
		}
	})
	return a
}

// start runs the agent and waits for its first decision set.
func (a *fleetAgent) start() {
	a.t.Helper()
	a.agentProc.start(a.ns, a.config)
}

func (a *fleetAgent) check(addr string) maps.Verdict {
	a.t.Helper()
	return checkPinned(a.t, a.pin, addr)
}

func checkPinned(t testing.TB, pin, addr string) maps.Verdict {
	t.Helper()
	pm, err := loader.OpenPinnedMaps(pin)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	m, err := maps.New(pm)
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Check(netip.MustParseAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	return res.Verdict
}

func (a *fleetAgent) metrics() metricSet {
	a.t.Helper()
	return scrape(a.t, a.ns.Name, 60601)
}

// dialIn dials addr from inside the named network namespace and puts the
// thread back in its own namespace afterwards. testutil.HTTPClientIn and
// NetNS.Do let their thread die instead, and a thread that dies kills the
// children it started with Pdeathsig: the agents of these tests, started
// by the harness from any thread, must not lose theirs.
func dialIn(ctx context.Context, netnsName, network, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer orig.Close()
	h, err := netns.GetFromName(netnsName)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if netns.Set(orig) == nil {
		runtime.UnlockOSThread()
	} // else the thread stays locked, and goes with the goroutine
	return c, err
}

// httpClientIn is an HTTP client whose connections are dialled from inside
// the named network namespace, with dialIn.
func httpClientIn(netnsName string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			type result struct {
				c   net.Conn
				err error
			}
			ch := make(chan result, 1)
			go func() { c, err := dialIn(ctx, netnsName, network, addr); ch <- result{c, err} }()
			r := <-ch
			return r.c, r.err
		},
		DisableKeepAlives: true,
	}}
}

// metricSet is a Prometheus text exposition, by series: name{labels}.
type metricSet map[string]float64

func scrape(t testing.TB, netns string, port int) metricSet {
	t.Helper()
	resp, err := httpClientIn(netns).Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	out := metricSet{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

// sum adds the series whose name{labels} starts with prefix.
func (m metricSet) sum(prefix string) float64 {
	var n float64
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			n += v
		}
	}
	return n
}

const (
	mCorrected = "xdpgate_resync_corrections_total"
	mResyncOK  = `xdpgate_resyncs_total{result="ok"}`
	mHeld      = `xdpgate_resyncs_total{result="held"}`
	mUpserts   = `xdpgate_backend_writes_total{backend="xdp",op="upsert"}`
	mDeletes   = `xdpgate_backend_writes_total{backend="xdp",op="delete"}`
	mWrites    = "xdpgate_backend_writes_total"
)

// TestFleetSharedKey runs two agents that share one bouncer key, the
// reference DaemonSet's setup. LAPI 1.4.6 keeps one stream position per
// key, so each delta goes to whichever agent pulls first: without resync
// the other never hears of it; with it, the other catches up at its next
// resync, and the resync writes only that entry.
func TestFleetSharedKey(t *testing.T) {
	lab := newFleetLab(t)
	key := lab.lapi.AddBouncer(t, "xdpgate-fleet")
	agents := []*fleetAgent{lab.agent(1, "api_key: "+key, 0), lab.agent(2, "api_key: "+key, 0)}
	for _, a := range agents {
		a.start()
	}

	// Resync off: some delta reaches one agent only, and stays missing.
	missed := ""
	for i := 0; i < 5 && missed == ""; i++ {
		addr := fmt.Sprintf("10.97.0.%d", 10+i)
		lab.lapi.AddDecision(t, "--ip", addr, "--duration", "1h")
		time.Sleep(6 * fleetUpdate)
		var have []string
		for _, a := range agents {
			if a.check(addr) == maps.VerdictDrop {
				have = append(have, a.name)
			}
		}
		t.Logf("resync off: ban on %s enforced by %v of 2 agents", addr, have)
		if len(have) < len(agents) {
			missed = addr
		}
	}
	if missed == "" {
		t.Fatal("every delta reached both agents: LAPI 1.4.6 was expected to hand a shared key's delta to one of them")
	}
	time.Sleep(fleetResync * 11 / 10) // as long as a resync would take
	for _, a := range agents {
		if a.check(missed) != maps.VerdictDrop {
			t.Logf("resync off: %s still does not enforce %s after %v: nothing but a full pull repairs a lost delta",
				a.name, missed, 6*fleetUpdate+fleetResync*11/10)
		}
	}

	// Resync on. The restart's startup pull repairs the missed ban.
	for _, a := range agents {
		a.stop()
		editFile(t, a.config, "resync_interval: 0s", "resync_interval: "+fleetResync.String())
		a.start()
		if got := a.check(missed); got != maps.VerdictDrop {
			t.Fatalf("%s after a restart: %s is %s", a.name, missed, got)
		}
	}

	// A change reaches both within one resync interval; the agent that
	// missed the delta is repaired by a resync that writes that entry
	// only.
	converge := func(what, addr string, want maps.Verdict, op string) (byResync int) {
		t.Helper()
		before := make([]metricSet, len(agents))
		for i, a := range agents {
			before[i] = a.metrics()
		}
		start := time.Now()
		if want == maps.VerdictDrop {
			lab.lapi.AddDecision(t, "--ip", addr, "--duration", "1h")
		} else {
			lab.lapi.DeleteDecisions(t, "--ip", addr)
		}
		took := make([]time.Duration, len(agents))
		testutil.WaitFor(t, fleetConverge, fmt.Sprintf("%s of %s to reach both agents", what, addr), func() bool {
			done := true
			for i, a := range agents {
				if took[i] == 0 && a.check(addr) == want {
					took[i] = time.Since(start)
				}
				done = done && took[i] != 0
			}
			return done
		})
		time.Sleep(fleetUpdate) // the metrics follow the map writes
		for i, a := range agents {
			after := a.metrics()
			corrected := after.sum(mCorrected) - before[i].sum(mCorrected)
			writes := after[op] - before[i][op]
			how := "its delta"
			if corrected > 0 {
				how = fmt.Sprintf("a resync (%v corrections)", corrected)
				byResync++
			}
			t.Logf("%s of %s: %s after %v, by %s", what, addr, a.name, took[i].Round(time.Millisecond), how)
			if writes != 1 {
				t.Errorf("%s: %s of %s wrote %v entries (%s), want exactly 1", a.name, what, addr, writes, op)
			}
		}
		return byResync
	}
	repaired := 0
	for i := 0; i < 3 && repaired == 0; i++ {
		addr := fmt.Sprintf("10.97.1.%d", 1+i)
		repaired += converge("ban", addr, maps.VerdictDrop, mUpserts)
		converge("delete", addr, maps.VerdictPass, mDeletes)
	}
	if repaired == 0 {
		t.Error("no ban was repaired by a resync: with one shared key every delta reached both agents, which LAPI 1.4.6 does not do")
	}
	for _, a := range agents {
		st, err := agent.ReadState(a.pin)
		if err != nil || st.LastResync.IsZero() {
			t.Errorf("%s: state file has no last resync: %+v, %v", a.name, st, err)
		}
	}
}

// TestFleetResyncWritesNothing checks that resyncs that find nothing to
// change write nothing: the same entries, expiries within the tolerance.
func TestFleetResyncWritesNothing(t *testing.T) {
	h := newHarnessWith(t, fleetUpdate, 2*time.Second, "")
	rows := make([]lapitest.ImportRow, 0, 20_000)
	for i := 0; i < 20_000; i++ {
		v := fmt.Sprintf("100.%d.%d.%d", 64+i>>16, (i>>8)&0xff, i&0xff)
		switch i % 100 {
		case 7:
			v = fmt.Sprintf("100.%d.%d.0/24", 128+i>>16, (i>>8)&0xff)
		case 13:
			v = fmt.Sprintf("2001:db8:%x::%x", i>>16, i&0xffff)
		}
		rows = append(rows, lapitest.ImportRow{Value: v, Duration: fmt.Sprintf("%dh%dm", 1+i%40, i%60)})
	}
	h.lapi.Import(t, rows)
	h.start()
	m := func() metricSet { return scrape(t, h.tp.Host.Name, h.port) }
	before := m()
	testutil.WaitFor(t, 6*2*time.Second, "three resyncs", func() bool { return m()[mResyncOK] >= 3 })
	after := m()
	if w := after.sum(mWrites) - before.sum(mWrites); w != 0 {
		t.Errorf("%v resyncs of %d decisions wrote %v entries, want 0", after[mResyncOK], len(rows), w)
	}
	if c := after.sum(mCorrected); c != 0 {
		t.Errorf("resyncs corrected %v entries, want 0", c)
	}
	// Not h.xdpgate: it runs in the host namespace on a thread that then
	// dies (see dialIn). status reads pins and the state file only.
	var status bytes.Buffer
	run([]string{"status", "-c", h.config}, &status, &status)
	out := status.String()
	if !strings.Contains(out, "last full resync") || !strings.Contains(out, "(0 corrections)") {
		t.Errorf("status does not show the last resync:\n%s", out)
	}
	t.Logf("%v resyncs of %d decisions (%v entries in the maps): %v map writes",
		after[mResyncOK], len(rows), after.sum("xdpgate_map_entries"), after.sum(mWrites)-before.sum(mWrites))
}

// TestFleetLAPIRestartDuringResync kills the LAPI while it computes the
// complete set for a resync: the agent keeps every entry, removes nothing
// while LAPI is gone, and converges once it is back.
func TestFleetLAPIRestartDuringResync(t *testing.T) {
	lab := newFleetLab(t)
	const n = 50_000
	rows := make([]lapitest.ImportRow, 0, n)
	for i := 0; i < n; i++ {
		rows = append(rows, lapitest.ImportRow{Value: fmt.Sprintf("100.%d.%d.%d", 64+i>>16, (i>>8)&0xff, i&0xff)})
	}
	lab.lapi.Import(t, rows)
	lab.lapi.AddDecision(t, "--ip", "10.97.0.3", "--duration", "1h")
	const resync = 4 * time.Second
	a := lab.agent(1, "api_key: "+lab.lapi.AddBouncer(t, "xdpgate-fleet")+"\nlog_level: debug", resync)
	a.start()
	before := a.metrics()
	alive := func() {
		t.Helper()
		select {
		case <-a.exited():
			t.Fatalf("the agent exited:\n%s", a.logText())
		default:
		}
	}

	const asking = "full resync: asking LAPI"
	seen := strings.Count(a.logText(), asking)
	testutil.WaitFor(t, 10*time.Second, "a resync to start", func() bool { return strings.Count(a.logText(), asking) > seen })
	time.Sleep(300 * time.Millisecond) // LAPI is building the 50k answer
	if err := syscall.Kill(lapiPID(t, lab.lapi), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	lab.lapi.Stop(t) // reaps it
	killedAt := len(a.logText())

	// LAPI gone: everything stays, nothing is removed.
	time.Sleep(3 * time.Second)
	alive()
	for _, addr := range []string{"10.97.0.3", "100.64.0.0", "100.64.195.79"} {
		if got := a.check(addr); got != maps.VerdictDrop {
			t.Errorf("LAPI down: %s is %s", addr, got)
		}
	}
	if d := a.metrics()[mDeletes] - before[mDeletes]; d != 0 {
		t.Errorf("LAPI down: %v entries removed", d)
	}
	if !strings.Contains(a.logText()[killedAt:], "decision pull failed") {
		t.Logf("no failed pull logged: the resync's pull may have completed before the kill")
	}

	lab.lapi.Start(t)
	testutil.WaitFor(t, 30*time.Second, "a resync after LAPI came back", func() bool {
		return a.metrics()[mResyncOK] > before[mResyncOK]
	})
	alive()
	lab.lapi.DeleteDecisions(t, "--ip", "10.97.0.3")
	lab.lapi.AddDecision(t, "--ip", "10.97.0.4", "--duration", "1h")
	testutil.WaitFor(t, 2*resync+5*time.Second, "the agent to converge", func() bool {
		return a.check("10.97.0.3") == maps.VerdictPass && a.check("10.97.0.4") == maps.VerdictDrop
	})
	after := a.metrics()
	if d := after[mDeletes] - before[mDeletes]; d != 1 {
		t.Errorf("%v entries removed over the restart, want 1 (the deleted decision)", d)
	}
	if e := after.sum("xdpgate_map_entries"); e != n+1 {
		t.Errorf("%v entries in the maps, want %d", e, n+1)
	}
	t.Logf("LAPI killed during a resync of %d decisions: 0 entries lost, converged; resyncs ok %v, failed %v",
		n, after[mResyncOK], after[`xdpgate_resyncs_total{result="error"}`])
}

// lapiPID finds the crowdsec process of l by its configuration path.
func lapiPID(t testing.TB, l *lapitest.LAPI) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if filepath.Base(args[0]) == "crowdsec" && strings.Contains(string(cmdline), l.ConfigPath()) {
			return pid
		}
	}
	t.Fatalf("no crowdsec process for %s", l.ConfigPath())
	return 0
}

// replicaProxy plays a Service in front of LAPI replicas: every request
// goes to the replica chosen at that moment, or fails as told.
type replicaProxy struct {
	url  string
	mode atomic.Value // "a", "b", "5xx" or "reset"
}

func newReplicaProxy(t *testing.T, ns *testutil.NetNS, a, b *lapitest.LAPI) *replicaProxy {
	t.Helper()
	p := &replicaProxy{}
	p.mode.Store("a")
	ua, _ := url.Parse(a.URL())
	ub, _ := url.Parse(b.URL())
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			u := ua
			if p.mode.Load() == "b" {
				u = ub
			}
			r.SetURL(u)
		},
		Transport: httpClientIn(ns.Name).Transport,
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p.mode.Load() {
		case "5xx":
			http.Error(w, "upstream unavailable", http.StatusBadGateway)
		case "reset":
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // RST, not FIN
				}
				c.Close()
			}
		default:
			rp.ServeHTTP(w, r)
		}
	})
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	p.url = "http://" + ln.Addr().String() + "/"
	return p
}

// TestFleetLAPIReplicas puts the agent behind a proxy in front of two LAPI
// replicas: A holds the bans, B is a replica with an older (here: empty)
// view of them. Errors and resets must not unban anything; a resync
// answered by B is held instead of removing every ban; B's view is applied
// only when two resyncs in a row say the same, and A's view is restored by
// the next resync that reaches A.
func TestFleetLAPIReplicas(t *testing.T) {
	h := newHarnessWith(t, fleetUpdate, fleetResync, "")
	b := lapitest.StartInNetNS(t, h.tp.Host.Name)
	b.Cscli(t, "bouncers", "add", "xdpgate-test", "-k", h.key)
	p := newReplicaProxy(t, h.tp.Host, h.lapi, b)
	editFile(t, h.config, "api_url: "+h.lapi.URL(), "api_url: "+p.url)

	const n = 300
	rows := make([]lapitest.ImportRow, 0, n)
	for i := 0; i < n; i++ {
		rows = append(rows, lapitest.ImportRow{Value: fmt.Sprintf("10.96.%d.%d", i>>8, i&0xff)})
	}
	h.lapi.Import(t, rows)
	h.start()
	m := func() metricSet { return scrape(t, h.tp.Host.Name, h.port) }
	entries := func() float64 { return m().sum("xdpgate_map_entries") }
	if e := entries(); e != n {
		t.Fatalf("%v entries after start, want %d", e, n)
	}
	before := m()
	resyncs := func() float64 { return m().sum("xdpgate_resyncs_total") }

	// Bad gateway, then connection resets: retries, nothing removed.
	for _, mode := range []string{"5xx", "reset"} {
		p.mode.Store(mode)
		time.Sleep(4 * fleetUpdate)
		if e := entries(); e != n {
			t.Errorf("answers %s: %v entries, want %d", mode, e, n)
		}
	}
	p.mode.Store("a")
	okPulls := m()[`xdpgate_lapi_pulls_total{result="ok"}`]
	testutil.WaitFor(t, 20*time.Second, "a good pull after the backoff", func() bool {
		return m()[`xdpgate_lapi_pulls_total{result="ok"}`] > okPulls
	})
	if d := m()[mDeletes] - before[mDeletes]; d != 0 {
		t.Errorf("errors and resets removed %v entries", d)
	}

	// One resync answered by the empty replica is held.
	p.mode.Store("b")
	testutil.WaitFor(t, 2*fleetConverge, "a resync answered by the empty replica", func() bool { return m()[mHeld] >= 1 })
	p.mode.Store("a")
	if e := entries(); e != n {
		t.Errorf("after a held resync: %v entries, want %d", e, n)
	}
	r := resyncs()
	testutil.WaitFor(t, fleetConverge, "the next resync, from A", func() bool { return resyncs() > r })
	after := m()
	if d := after[mDeletes] - before[mDeletes]; d != 0 {
		t.Errorf("a resync from the older replica removed %v entries", d)
	}
	if e := entries(); e != n {
		t.Errorf("after the next resync from A: %v entries, want %d", e, n)
	}
	if !strings.Contains(h.logText(), "full resync would remove a large share") {
		t.Error("the held resync logged no warning")
	}

	// Two resyncs in a row from B: the removal is taken as real.
	p.mode.Store("b")
	testutil.WaitFor(t, 3*fleetConverge, "two resyncs from B to remove everything", func() bool { return entries() == 0 })
	if !strings.Contains(h.logText(), "confirmed_removal=true") {
		t.Error("the confirmed removal was not logged as such")
	}
	// Back to A: the next resync puts every ban back.
	p.mode.Store("a")
	testutil.WaitFor(t, fleetConverge, "the next resync from A to restore the bans", func() bool { return entries() == n })
	final := m()
	t.Logf("resyncs: ok %v, held %v, error %v; pulls failed %v",
		final[mResyncOK], final[mHeld], final[`xdpgate_resyncs_total{result="error"}`], final[`xdpgate_lapi_pulls_total{result="error"}`])
}

// fleetPKI is a CA and the LAPI's server certificate, for TLS
// authentication of bouncers.
type fleetPKI struct {
	dir string
	ca  *x509.Certificate
	key *ecdsa.PrivateKey
}

func newFleetPKI(t *testing.T, serverIPs ...net.IP) *fleetPKI {
	t.Helper()
	p := &fleetPKI{dir: t.TempDir()}
	var err error
	if p.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "xdpgate test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &p.key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.path("ca.pem"), "CERTIFICATE", der)
	p.issue(t, "server", &x509.Certificate{
		Subject: pkix.Name{CommonName: "lapi"}, IPAddresses: serverIPs,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return p
}

func (p *fleetPKI) path(name string) string { return filepath.Join(p.dir, name) }

// issue writes name.pem and name-key.pem.
func (p *fleetPKI) issue(t *testing.T, name string, tpl *x509.Certificate) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tpl.SerialNumber = serial
	tpl.NotBefore, tpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	tpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tpl, p.ca, &k.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.path(name+".pem"), "CERTIFICATE", der)
	kd, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.path(name+"-key.pem"), "EC PRIVATE KEY", kd)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// enableTLS restarts the LAPI with TLS, bouncers authenticated by a
// client certificate of OU "bouncer-ou" or by API key, as the CrowdSec
// documentation sets it up.
func (lab *fleetLab) enableTLS(serverIPs ...net.IP) {
	t := lab.t
	t.Helper()
	lab.tls = newFleetPKI(t, append(serverIPs, net.ParseIP("127.0.0.1"))...)
	lab.lapi.Stop(t)
	lab.editLAPIConfig("    trusted_ips:", fmt.Sprintf(`    tls:
      cert_file: %[1]s/server.pem
      key_file: %[1]s/server-key.pem
      client_verification: VerifyClientCertIfGiven
      ca_cert_path: %[1]s/ca.pem
      bouncers_allowed_ou: [bouncer-ou]
      agents_allowed_ou: [agent-ou]
    trusted_ips:`, lab.tls.dir))
	// cscli talks to the LAPI too.
	lab.editLAPIConfig("insecure_skip_verify: false", "insecure_skip_verify: true")
	editFile(t, filepath.Join(lab.lapi.Dir(), "etc", "local_api_credentials.yaml"), "url: http://", "url: https://")
	lab.lapi.Start(t)
	lab.scheme = "https"
}

// TestFleetPerNodeIdentity gives each agent an identity of its own, with
// no resync: two agents with API keys of their own, two with one client
// certificate. LAPI 1.4.6 names a certificate's bouncer CN@IP, so each
// agent has its own stream position and every delta reaches every agent.
func TestFleetPerNodeIdentity(t *testing.T) {
	lab := newFleetLab(t)
	lab.enableTLS(net.ParseIP("10.98.1.1"), net.ParseIP("10.98.2.1"), net.ParseIP("10.98.3.1"), net.ParseIP("10.98.4.1"))
	lab.tls.issue(t, "xdpgate", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "xdpgate", OrganizationalUnit: []string{"bouncer-ou"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	ca := "ca_cert_path: " + lab.tls.path("ca.pem") + "\n"
	cert := fmt.Sprintf("cert_path: %s\nkey_path: %s\n", lab.tls.path("xdpgate.pem"), lab.tls.path("xdpgate-key.pem"))
	agents := []*fleetAgent{
		lab.agent(1, ca+"api_key: "+lab.lapi.AddBouncer(t, "node-1"), 0),
		lab.agent(2, ca+"api_key: "+lab.lapi.AddBouncer(t, "node-2"), 0),
		lab.agent(3, ca+cert, 0),
		lab.agent(4, ca+cert, 0),
	}
	for _, a := range agents {
		a.start()
	}
	bouncers := lab.lapi.Cscli(t, "bouncers", "list", "-o", "raw")
	for _, want := range []string{"node-1", "node-2", "xdpgate@10.98.3.2", "xdpgate@10.98.4.2"} {
		if !strings.Contains(bouncers, want+",") {
			t.Errorf("no bouncer %s in:\n%s", want, bouncers)
		}
	}
	t.Logf("bouncers:\n%s", bouncers)

	for i := 0; i < 3; i++ {
		addr := fmt.Sprintf("10.97.2.%d", 1+i)
		for _, want := range []maps.Verdict{maps.VerdictDrop, maps.VerdictPass} {
			start := time.Now()
			if want == maps.VerdictDrop {
				lab.lapi.AddDecision(t, "--ip", addr, "--duration", "1h")
			} else {
				lab.lapi.DeleteDecisions(t, "--ip", addr)
			}
			// No resync: only the deltas can bring it, within a few
			// update intervals.
			testutil.WaitFor(t, 6*fleetUpdate+time.Second, fmt.Sprintf("%s on %s to reach all 4 agents by delta", want, addr), func() bool {
				for _, a := range agents {
					if a.check(addr) != want {
						return false
					}
				}
				return true
			})
			t.Logf("%s on %s reached all 4 agents in %v", want, addr, time.Since(start).Round(time.Millisecond))
		}
	}
}

// TestFleetPerNodeIdentityConfig merges each per-node identity component's
// xdpgate.yaml.local over the Kubernetes base configuration, as the agent
// does in the pod, and checks the identity it ends with.
func TestFleetPerNodeIdentityConfig(t *testing.T) {
	base, err := os.ReadFile("../../deploy/kubernetes/config/xdpgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODE_IP", "192.0.2.10")
	for _, tc := range []struct {
		component string
		check     func(t *testing.T, cfg *config.Config, node string)
	}{
		{"tls", func(t *testing.T, cfg *config.Config, node string) {
			if cfg.APIKey != "" || cfg.APIKeyFile != "" {
				t.Errorf("an API key is left: file %q", cfg.APIKeyFile)
			}
			if cfg.CertPath != filepath.Join(node, "tls.crt") || cfg.KeyPath != filepath.Join(node, "tls.key") || cfg.CACertPath != filepath.Join(node, "ca.crt") {
				t.Errorf("certificate %q, key %q, CA %q", cfg.CertPath, cfg.KeyPath, cfg.CACertPath)
			}
			if !strings.HasPrefix(cfg.APIURL, "https://") {
				t.Errorf("api_url %q is not https", cfg.APIURL)
			}
		}},
		{"api-key", func(t *testing.T, cfg *config.Config, node string) {
			if cfg.APIKey.Reveal() != "node-key" || cfg.CertPath != "" {
				t.Errorf("key %q from %q, certificate %q", cfg.APIKey.Reveal(), cfg.APIKeyFile, cfg.CertPath)
			}
		}},
	} {
		t.Run(tc.component, func(t *testing.T) {
			local, err := os.ReadFile(filepath.Join("../../deploy/kubernetes/per-node-identity", tc.component, "xdpgate.yaml.local"))
			if err != nil {
				t.Fatal(err)
			}
			// The pod's paths, moved under a directory of the test.
			dir, node := t.TempDir(), t.TempDir()
			local = bytes.ReplaceAll(local, []byte("/run/secrets/xdpgate-node"), []byte(node))
			for _, f := range []string{"tls.crt", "tls.key", "ca.crt", "api-key"} {
				if err := os.WriteFile(filepath.Join(node, f), []byte("node-key\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			for name, b := range map[string][]byte{"xdpgate.yaml": base, "xdpgate.yaml.local": local} {
				if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg, err := config.Load(filepath.Join(dir, "xdpgate.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, cfg, node)
			if cfg.ResyncInterval != 30*time.Minute {
				t.Errorf("resync_interval %v, want 30m", cfg.ResyncInterval)
			}
		})
	}
}
