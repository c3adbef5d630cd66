// Package e2e runs the whole path with real parts: the xdpgate and edgesync
// binaries, a real CrowdSec LAPI, XDP on veth pairs between network
// namespaces, a node whose nftables DNAT sends a service address on to a
// pod, and the fake Cloudflare API.
//
//	client ══ veth0 ┐                        ┌ veth4 ══ pod (HTTP on :8080)
//	                ├ node: xdpgate (XDP), ──┤
//	attacker ═ veth2┘ nft DNAT svc → pod,    │
//	                  LAPI, edgesync, fake Cloudflare API on loopback
//
// Run it with `make e2e`; it needs root.
package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/cffake"
	"github.com/xdpgate/xdpgate/internal/lapitest"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// bin holds the binaries under test, built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "xdpgate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, name := range []string{"xdpgate", "edgesync"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", name, err, out)
			os.Exit(1)
		}
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	updateFrequency = time.Second
	// resyncInterval repairs a delta LAPI 1.4.6 loses when a pull races
	// an insert (see docs/fleet.md); bans normally arrive by delta.
	resyncInterval = 5 * time.Second
	metricsPort    = 60621
	listName       = "crowdsec_ban"
	zone           = "zone-e2e"
)

// world is the topology and the processes of the test.
type world struct {
	t     *testing.T
	d     *testutil.DNAT
	lapi  *lapitest.LAPI
	cf    *cffake.Server
	dir   string
	pin   string
	start time.Time
	steps []string

	agent     *exec.Cmd
	agentLog  *testutil.Log
	agentDone chan struct{}
}

// mark records a step of the timeline.
func (w *world) mark(format string, args ...any) {
	line := fmt.Sprintf("%7.2fs  ", time.Since(w.start).Seconds()) + fmt.Sprintf(format, args...)
	w.steps = append(w.steps, line)
	w.t.Log(line)
}

func newWorld(t *testing.T) *world {
	testutil.Privileged(t)
	testutil.NeedCommand(t, "nsenter")
	w := &world{t: t, d: testutil.NewDNAT(t), dir: t.TempDir(), start: time.Now()}
	w.lapi = lapitest.StartInNetNS(t, w.d.Node.Name)
	agentKey := w.lapi.AddBouncer(t, "xdpgate-e2e")
	edgeKey := w.lapi.AddBouncer(t, "edgesync-e2e")

	// The fake Cloudflare API listens on the node's loopback, where
	// edgesync runs.
	var ln net.Listener
	if err := w.d.Node.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const token = "cf-e2e-token-7d1c"
	w.cf = cffake.New(t, cffake.Options{Token: token, Zones: []string{zone}, Listener: ln})

	w.pin = filepath.Join("/sys/fs/bpf", fmt.Sprintf("xdpgate-e2e-%d", os.Getpid()))
	if err := loader.EnsureBPFFS(w.pin); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(w.dir, "lapi.key"), agentKey+"\n")
	write(t, filepath.Join(w.dir, "xdpgate.yaml"), fmt.Sprintf(`api_url: %s
api_key_file: %s
update_frequency: %s
resync_interval: %s
interfaces: [veth0, veth2]
xdp_mode: native
pin_path: %s
nftables:
  ipv4_table: xdpgate_e2e
  ipv6_table: xdpgate6_e2e
prometheus:
  listen_addr: 127.0.0.1
  listen_port: %d
`, w.lapi.URL(), filepath.Join(w.dir, "lapi.key"), updateFrequency, resyncInterval, w.pin, metricsPort))
	write(t, filepath.Join(w.dir, "cf.token"), token+"\n")
	write(t, filepath.Join(w.dir, "edgesync.yaml"), fmt.Sprintf(`api_url: %s
api_key: %s
cloudflare:
  account_id: %s
  api_token_file: %s
  base_url: %s
  list_name: %s
  zones:
    - zone_id: %s
`, w.lapi.URL(), edgeKey, w.cf.AccountID(), filepath.Join(w.dir, "cf.token"), w.cf.URL(), listName, zone))
	t.Cleanup(func() {
		w.stopAgent()
		out, err := w.d.Node.Enter(filepath.Join(bin, "xdpgate"), "uninstall", "-c", filepath.Join(w.dir, "xdpgate.yaml")).CombinedOutput()
		if err != nil {
			t.Errorf("uninstall: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", w.agentLog)
		}
	})
	return w
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startAgent runs xdpgate in the node and waits for its first decision
// set to be applied.
func (w *world) startAgent() {
	w.t.Helper()
	cmd := w.d.Node.Enter(filepath.Join(bin, "xdpgate"), "run", "-c", filepath.Join(w.dir, "xdpgate.yaml"))
	log := &testutil.Log{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := testutil.Start(cmd); err != nil {
		w.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	w.agent, w.agentLog, w.agentDone = cmd, log, done
	testutil.WaitFor(w.t, 30*time.Second, "the agent to apply its first decision set", func() bool {
		select {
		case <-done:
			w.t.Fatalf("agent exited:\n%s", log)
		default:
		}
		return strings.Contains(log.String(), "decisions applied")
	})
}

// stopAgent sends SIGTERM and waits for the agent to exit.
func (w *world) stopAgent() {
	if w.agent == nil {
		return
	}
	_ = w.agent.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.agentDone:
	case <-time.After(15 * time.Second):
		_ = w.agent.Process.Kill()
		w.t.Errorf("agent did not exit on SIGTERM")
	}
	w.agent = nil
}

// edgesync runs one CronJob-style sync and returns how long it took.
func (w *world) edgesync() time.Duration {
	w.t.Helper()
	begin := time.Now()
	out, err := w.d.Node.Enter(filepath.Join(bin, "edgesync"), "run", "--once", "-c", filepath.Join(w.dir, "edgesync.yaml")).CombinedOutput()
	if err != nil {
		w.t.Fatalf("edgesync run --once: %v\n%s", err, out)
	}
	return time.Since(begin)
}

// edgeList returns what the Cloudflare list holds.
func (w *world) edgeList() []string {
	var out []string
	for _, it := range w.cf.Items(listName) {
		out = append(out, it.IP)
	}
	slices.Sort(out)
	return out
}

// served reports whether src, an address of ns, gets an answer from the
// pod through the service.
func (w *world) served(ns *testutil.NetNS, src string) bool {
	return w.d.Connect(ns, src, 400*time.Millisecond) == nil
}

// waitBlocked waits until src is no longer served and returns how long
// after since the first failing attempt began.
func (w *world) waitBlocked(src string, since time.Time) time.Duration {
	w.t.Helper()
	return w.waitFor(src+" to be blocked", since, func() bool { return !w.served(w.d.Attacker, src) })
}

// waitServed waits until src, an attacker address, is served again.
func (w *world) waitServed(src string, since time.Time) time.Duration {
	w.t.Helper()
	return w.waitFor(src+" to be served again", since, func() bool { return w.served(w.d.Attacker, src) })
}

// waitFor polls probe until it holds and returns how long after since the
// successful probe began: the probe's own timeout is not counted.
func (w *world) waitFor(what string, since time.Time, probe func() bool) time.Duration {
	w.t.Helper()
	var at time.Time
	testutil.WaitFor(w.t, 2*updateFrequency+2*resyncInterval, what, func() bool {
		at = time.Now()
		return probe()
	})
	return at.Sub(since)
}

// family is the DNAT counter of an address's family.
func family(addr string) string {
	if strings.Contains(addr, ":") {
		return "ip6"
	}
	return "ip"
}

// mustStayBlocked makes a few attempts from src and checks that none was
// served and that the DNAT rule never saw one: XDP dropped them before
// netfilter.
func (w *world) mustStayBlocked(src string, attempts int) {
	w.t.Helper()
	fam := family(src)
	before, pod := w.d.DNATPackets(w.t, fam), w.d.PodAccepted(src)
	for range attempts {
		if w.served(w.d.Attacker, src) {
			w.t.Fatalf("%s was served while banned", src)
		}
	}
	if after := w.d.DNATPackets(w.t, fam); after != before {
		w.t.Fatalf("%s: the DNAT rule saw %d packets while banned: XDP did not drop them first", src, after-before)
	}
	if n := w.d.PodAccepted(src) - pod; n != 0 {
		w.t.Fatalf("%s: the pod accepted %d connections while banned", src, n)
	}
}

func (w *world) mustBeServed(ns *testutil.NetNS, srcs ...string) {
	w.t.Helper()
	for _, src := range srcs {
		if err := w.d.Connect(ns, src, 2*time.Second); err != nil {
			w.t.Fatalf("%s not served: %v", src, err)
		}
	}
}

// waitEdge waits until the Cloudflare list holds (or, with present false,
// no longer holds) every value, running edgesync as the CronJob would.
func (w *world) waitEdge(present bool, values ...string) time.Duration {
	w.t.Helper()
	var took time.Duration
	testutil.WaitFor(w.t, 20*time.Second, fmt.Sprintf("the edge list to hold=%v %v", present, values), func() bool {
		took = w.edgesync()
		list := w.edgeList()
		for _, v := range values {
			if slices.Contains(list, v) != present {
				return false
			}
		}
		return true
	})
	return took
}

func TestEndToEnd(t *testing.T) {
	w := newWorld(t)
	const (
		attacker  = testutil.AttackerV4 // 10.97.0.2
		attacker2 = "10.97.0.3"         // inside the range ban
		attacker6 = testutil.AttackerV6 // fd00:97::2
		client    = testutil.ClientV4
		client6   = testutil.ClientV6
	)
	// Standing bans elsewhere, so that the final deletes are a small
	// share of the edge list (edgesync's delete guard), and a community
	// blocklist entry that must stay off the edge.
	for i := 1; i <= 8; i++ {
		w.lapi.AddDecision(t, "--ip", fmt.Sprintf("192.0.2.%d", i), "--duration", "4h")
	}
	w.lapi.PostAlert(t, lapitest.Alert{Origin: "CAPI", Value: "198.51.100.77", Scenario: "crowdsecurity/community-blocklist"})

	w.startAgent()
	w.mark("agent up: XDP on veth0 and veth2, first decision set applied")
	w.mustBeServed(w.d.Attacker, attacker, attacker2, attacker6)
	w.mustBeServed(w.d.Client, client, client6)
	w.mark("attacker and client served through the DNAT")

	// 1. An IP ban.
	w.lapi.AddDecision(t, "--ip", attacker, "--duration", "1h")
	begin := time.Now()
	lat := w.waitBlocked(attacker, begin)
	w.mark("cscli ban %s → its connections fail %v after cscli returned (update_frequency %v)", attacker, lat.Round(time.Millisecond), updateFrequency)
	w.mustStayBlocked(attacker, 3)
	w.mustBeServed(w.d.Client, client)
	w.mark("DNAT counter still for %s; client still served", attacker)
	took := w.waitEdge(true, attacker)
	if slices.Contains(w.edgeList(), "198.51.100.77") {
		t.Fatalf("the CAPI community blocklist reached the edge list: %v", w.edgeList())
	}
	rs, ok := w.cf.Entrypoint(zone, "http_request_firewall_custom")
	if !ok || len(rs.Rules) != 1 || rs.Rules[0].Action != "block" || rs.Rules[0].Expression != "(ip.src in $"+listName+")" {
		t.Fatalf("zone rule: %+v", rs)
	}
	w.mark("edgesync --once (%v): the Cloudflare list holds %s, the CAPI entry is left out, zone rule %q", took.Round(time.Millisecond), attacker, rs.Rules[0].Expression)

	// 2. A range ban and an IPv6 ban.
	w.lapi.AddDecision(t, "--range", "10.97.0.0/24", "--duration", "1h")
	begin = time.Now()
	lat = w.waitBlocked(attacker2, begin)
	w.mark("cscli ban range 10.97.0.0/24 → %s blocked: %v", attacker2, lat.Round(time.Millisecond))
	w.mustStayBlocked(attacker2, 2)
	w.lapi.AddDecision(t, "--ip", attacker6, "--duration", "1h")
	begin = time.Now()
	lat = w.waitBlocked(attacker6, begin)
	w.mark("cscli ban %s → blocked: %v", attacker6, lat.Round(time.Millisecond))
	w.mustStayBlocked(attacker6, 2)
	w.mustBeServed(w.d.Client, client, client6)
	took = w.waitEdge(true, "10.97.0.0/24", "fd00:97::/64")
	w.mark("edgesync --once (%v): the list holds 10.97.0.0/24 and fd00:97::/64 (IPv6 widened to /64)", took.Round(time.Millisecond))

	// 3. The agent restarts during a flood from the attacker: the pinned
	// program keeps dropping, so nothing reaches the DNAT or the pod.
	dnat4, pod4 := w.d.DNATPackets(t, "ip"), w.d.PodAccepted(attacker)
	stop := make(chan struct{})
	flooded := make(chan int)
	const flooders = 8
	for range flooders {
		go func() {
			n := 0
			for {
				select {
				case <-stop:
					flooded <- n
					return
				default:
				}
				_ = w.d.Connect(w.d.Attacker, attacker, 20*time.Millisecond)
				n++
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	begin = time.Now()
	w.stopAgent()
	down := time.Since(begin)
	time.Sleep(500 * time.Millisecond)
	w.startAgent()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	attempts := 0
	for range flooders {
		attempts += <-flooded
	}
	if d := w.d.DNATPackets(t, "ip") - dnat4; d != 0 {
		t.Fatalf("during the restart %d of the attacker's packets reached the DNAT rule", d)
	}
	if n := w.d.PodAccepted(attacker) - pod4; n != 0 {
		t.Fatalf("during the restart the pod accepted %d connections from the attacker", n)
	}
	w.mark("agent restarted (SIGTERM took %v) under a flood of %d connection attempts: 0 reached the DNAT rule or the pod", down.Round(time.Millisecond), attempts)

	// 4. LAPI goes away: the bans hold, the client is served.
	w.lapi.Stop(t)
	time.Sleep(2 * updateFrequency)
	w.mustStayBlocked(attacker, 2)
	w.mustStayBlocked(attacker6, 1)
	w.mustBeServed(w.d.Client, client, client6)
	w.mark("LAPI stopped for %v: bans hold, client served", 2*updateFrequency)
	w.lapi.Start(t)
	w.mark("LAPI started again")

	// 5. The decisions are deleted: the attacker is served again.
	w.lapi.DeleteDecisions(t, "--ip", attacker)
	w.lapi.DeleteDecisions(t, "--range", "10.97.0.0/24")
	w.lapi.DeleteDecisions(t, "--ip", attacker6)
	begin = time.Now()
	lat = w.waitServed(attacker, begin)
	w.waitServed(attacker2, begin)
	lat6 := w.waitServed(attacker6, begin)
	w.mark("cscli decisions delete → attacker served again: %v (IPv6 %v)", lat.Round(time.Millisecond), lat6.Round(time.Millisecond))
	took = w.waitEdge(false, attacker, "10.97.0.0/24", "fd00:97::/64")
	if n := len(w.edgeList()); n != 8 {
		t.Fatalf("the edge list holds %d items after the deletes, want the 8 standing bans: %v", n, w.edgeList())
	}
	w.mark("edgesync --once (%v): the list no longer holds them; the 8 standing bans stay", took.Round(time.Millisecond))

	status, err := w.d.Node.Enter(filepath.Join(bin, "xdpgate"), "status", "-c", filepath.Join(w.dir, "xdpgate.yaml")).CombinedOutput()
	if err != nil || !strings.Contains(string(status), "veth0") || !strings.Contains(string(status), "veth2") {
		t.Fatalf("xdpgate status: %v\n%s", err, status)
	}

	fmt.Fprintf(timeline(), "\nend-to-end timeline:\n%s\n", strings.Join(w.steps, "\n"))
}

// timeline is where the timeline goes: the terminal under `make e2e`
// (go test -v) and the test log otherwise.
func timeline() io.Writer { return os.Stdout }
