package main

// End-to-end tests of the nftables side of the agent: mode nftables alone,
// the forward hook on DNAT'd traffic against XDP before DNAT, the
// automatic fallback when XDP cannot attach, and tables that outlive the
// agent until `xdpgate uninstall`.

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"

	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/nftfallback"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// The harness's tables (see newHarnessWith).
const (
	testTable4 = "xdpgate_test"
	testTable6 = "xdpgate6_test"
)

// nftHas reports whether one of the agent's ban sets in the host namespace
// holds addr (an address of a banned range counts).
func (h *harness) nftHas(addr string) bool {
	fam, table := "ip", testTable4
	if netip.MustParseAddr(addr).Is6() {
		fam, table = "ip6", testTable6
	}
	for _, set := range []string{"banned_hosts", "banned_ranges"} {
		if h.tp.Host.Command("nft", "get", "element", fam, table, set, "{ "+addr+" }").Run() == nil {
			return true
		}
	}
	return false
}

// waitNFT waits until nftables bans addr (or no longer does).
func (h *harness) waitNFT(addr string, banned bool) {
	h.t.Helper()
	testutil.WaitFor(h.t, 3*updateFrequency+2*resyncInterval, fmt.Sprintf("nftables to ban %s: %v", addr, banned), func() bool {
		return h.nftHas(addr) == banned
	})
}

// nftCounters reads the agent's named drop counters in the host namespace.
func (h *harness) nftCounters() map[string]uint64 {
	h.t.Helper()
	b, err := nftfallback.New(nftfallback.Config{Table4: testTable4, Table6: testTable6, NetNS: int(h.tp.Host.Handle)}, slog.New(slog.DiscardHandler))
	if err != nil {
		h.t.Fatal(err)
	}
	defer b.Close()
	cs, err := b.Counters()
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, c := range cs {
		out[c.Family+" "+c.Hook] = c.Packets
	}
	return out
}

// metric returns the value of the sample of name whose labels include all
// of labels ("k=v"), from the agent's /metrics; -1 if there is none.
func (h *harness) metric(name string, labels ...string) float64 {
	h.t.Helper()
	resp, err := testutil.HTTPClientIn(h.tp.Host.Name).Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", h.port))
	if err != nil {
		h.t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
next:
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		end := strings.LastIndex(rest, "} ")
		if end < 0 {
			continue
		}
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if !strings.Contains(rest[:end], k+`="`+v+`"`) {
				continue next
			}
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest[end+2:]), 64)
		if err != nil {
			h.t.Fatalf("metric line %q: %v", line, err)
		}
		return v
	}
	return -1
}

// statusJSON runs `xdpgate status --json`.
func (h *harness) statusJSON() statusOut {
	h.t.Helper()
	out := h.xdpgate("status", "--json")
	var st statusOut
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		h.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

// interfaceMode returns how the agent says it enforces on dev, and why.
func (st statusOut) interfaceMode(dev string) (mode, why string) {
	if st.Agent == nil {
		return "", ""
	}
	for _, s := range st.Agent.Interfaces {
		if s.Interface == dev {
			return s.Mode, s.Error
		}
	}
	return "", ""
}

// xdpAttached returns the id of the XDP program on dev in the host
// namespace, 0 if none.
func (h *harness) xdpAttached(dev string) uint32 {
	h.t.Helper()
	var id uint32
	if err := h.tp.Host.Do(func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			id = x.ProgId
		}
		return nil
	}); err != nil {
		h.t.Fatal(err)
	}
	return id
}

// TestNFTMode runs the agent with `mode: nftables`: no XDP anywhere, and
// nftables alone drops exact, range, nested range and IPv6 bans, keeps the
// allowlist, and counts its drops where nft, the metrics and `xdpgate
// status` show them.
func TestNFTMode(t *testing.T) {
	h := newHarness(t, "mode: nftables\n")
	// 10.99.0.200 is the harness's allowlist; 10.99.0.201 is not.
	h.tp.Client.Run(t, "ip", "addr", "add", "10.99.0.200/24", "dev", "veth1")
	h.tp.Client.Run(t, "ip", "addr", "add", "10.99.0.201/24", "dev", "veth1")
	h.lapi.AddDecision(t, "--ip", "10.99.0.4", "--duration", "1h") // in the startup set
	h.start()
	r := h.tp.Listen(t)

	if id := h.xdpAttached("veth0"); id != 0 {
		t.Errorf("mode nftables, yet veth0 runs XDP program %d", id)
	}
	if !h.nftHas("10.99.0.4") {
		t.Fatal("startup set: 10.99.0.4 not in the nftables sets")
	}
	if n := h.delivered(r, "10.99.0.4", 10); n != 0 {
		t.Errorf("startup set: %d of 10 datagrams from 10.99.0.4 arrived", n)
	}

	// expect sends from each source and checks which get through.
	expect := func(t *testing.T, pass map[string]bool) {
		t.Helper()
		for src, want := range pass {
			n := h.delivered(r, src, 10)
			if want && n != 10 || !want && n != 0 {
				t.Errorf("%d of 10 datagrams from %s arrived; want it to pass=%v", n, src, want)
			}
		}
	}
	before := h.nftCounters()
	t.Run("exact", func(t *testing.T) {
		expect(t, map[string]bool{"10.99.0.2": true})
		h.lapi.AddDecision(t, "--ip", "10.99.0.2", "--duration", "1h")
		h.waitNFT("10.99.0.2", true)
		expect(t, map[string]bool{"10.99.0.2": false, "10.99.0.3": true})
		h.lapi.DeleteDecisions(t, "--ip", "10.99.0.2")
		h.waitNFT("10.99.0.2", false)
		expect(t, map[string]bool{"10.99.0.2": true})
	})
	t.Run("range", func(t *testing.T) {
		h.lapi.AddDecision(t, "--range", "10.99.0.0/30", "--duration", "1h")
		h.waitNFT("10.99.0.3", true)
		expect(t, map[string]bool{"10.99.0.2": false, "10.99.0.3": false, "10.99.0.201": true})
		h.lapi.DeleteDecisions(t, "--range", "10.99.0.0/30")
		h.waitNFT("10.99.0.3", false)
		expect(t, map[string]bool{"10.99.0.2": true, "10.99.0.3": true})
	})
	t.Run("nested ranges and the allowlist", func(t *testing.T) {
		h.lapi.AddDecision(t, "--range", "10.99.0.0/24", "--duration", "1h")
		h.lapi.AddDecision(t, "--range", "10.99.0.0/30", "--duration", "2h")
		h.waitNFT("10.99.0.201", true)
		h.waitNFT("10.99.0.2", true)
		// 10.99.0.200 is inside the /24 but allowlisted.
		expect(t, map[string]bool{"10.99.0.2": false, "10.99.0.201": false, "10.99.0.200": true})
		// Lifting the outer range keeps the inner one.
		h.lapi.DeleteDecisions(t, "--range", "10.99.0.0/24")
		h.waitNFT("10.99.0.201", false)
		expect(t, map[string]bool{"10.99.0.2": false, "10.99.0.3": false, "10.99.0.201": true})
		h.lapi.DeleteDecisions(t, "--range", "10.99.0.0/30")
		h.waitNFT("10.99.0.2", false)
		expect(t, map[string]bool{"10.99.0.2": true, "10.99.0.201": true})
	})
	t.Run("ipv6", func(t *testing.T) {
		h.lapi.AddDecision(t, "--ip", "fd00:99::2", "--duration", "1h")
		h.waitNFT("fd00:99::2", true)
		expect(t, map[string]bool{"fd00:99::2": false, "fd00:99::3": true})
		h.lapi.AddDecision(t, "--range", "fd00:99::/126", "--duration", "1h")
		h.waitNFT("fd00:99::3", true)
		expect(t, map[string]bool{"fd00:99::3": false})
		h.lapi.DeleteDecisions(t, "--ip", "fd00:99::2")
		h.lapi.DeleteDecisions(t, "--range", "fd00:99::/126")
		h.waitNFT("fd00:99::2", false)
		h.waitNFT("fd00:99::3", false)
		expect(t, map[string]bool{"fd00:99::2": true, "fd00:99::3": true})
	})
	t.Run("counters", func(t *testing.T) {
		after := h.nftCounters()
		for _, k := range []string{"ip input", "ip6 input"} {
			if after[k] <= before[k] {
				t.Errorf("nft counter %s: %d -> %d, want drops", k, before[k], after[k])
			}
		}
		for _, k := range []string{"ip forward", "ip6 forward"} {
			if after[k] != 0 {
				t.Errorf("nft counter %s = %d; nothing is forwarded here", k, after[k])
			}
		}
		if v := h.metric("xdpgate_nftables_dropped_packets_total", "family=ipv4", "hook=input"); v < float64(after["ip input"]) {
			t.Errorf("xdpgate_nftables_dropped_packets_total{ipv4,input} = %v, nft counts %d", v, after["ip input"])
		}
		if v := h.metric("xdpgate_nftables_dropped_packets_total", "family=ipv6", "hook=input"); v <= 0 {
			t.Errorf("xdpgate_nftables_dropped_packets_total{ipv6,input} = %v", v)
		}
		if v := h.metric("xdpgate_interface_enforcement", "interface=veth0", "mode=nftables"); v != 1 {
			t.Errorf("xdpgate_interface_enforcement{veth0,nftables} = %v, want 1", v)
		}
		out := h.xdpgate("status")
		want := regexp.MustCompile(`nftables ip input:\s+(\d+) packets dropped`)
		if m := want.FindStringSubmatch(out); m == nil || m[1] == "0" {
			t.Errorf("status does not show the input drops:\n%s", out)
		}
		if !regexp.MustCompile(`veth0\s+nftables`).MatchString(out) {
			t.Errorf("status does not show veth0 enforced by nftables:\n%s", out)
		}
		if st := h.statusJSON(); st.Installed || len(st.Attachments) != 0 {
			t.Errorf("mode nftables, yet status reports XDP: installed=%v attachments=%v", st.Installed, st.Attachments)
		}
	})
}

// dnatHarness starts an agent on the node of a DNAT topology, enforcing on
// the interfaces facing the client and the attacker, with the attacker's
// first addresses banned from the start.
func dnatHarness(t *testing.T, mode string) (*harness, *testutil.DNAT) {
	t.Helper()
	h := newHarness(t, "mode: "+mode+"\n")
	writeFile(t, h.config, strings.Replace(readFile(t, h.config), "interfaces: [veth0]", "interfaces: [veth0, veth2]", 1))
	d := testutil.AddDNAT(t, h.tp)
	for _, a := range []string{testutil.AttackerV4, testutil.AttackerV6} {
		h.lapi.AddDecision(t, "--ip", a, "--duration", "1h")
	}
	h.start()
	return h, d
}

// TestDNAT sends a client and an attacker to a service the node DNATs to a
// pod, as on a Kubernetes node. The banned attacker never connects: XDP
// drops it before the DNAT rule sees it, nftables alone drops it in the
// forward hook, after DNAT. The client connects in every mode.
func TestDNAT(t *testing.T) {
	for _, tc := range []struct {
		mode string
		// xdp: XDP drops, before DNAT; else nftables drops, in forward.
		xdp bool
		nft bool // nftables tables present
	}{
		{"xdp", true, false},
		{"nftables", false, true},
		{"both", true, true},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			h, d := dnatHarness(t, tc.mode)
			for _, src := range []string{"10.99.0.2", "fd00:99::2"} {
				if err := d.Connect(d.Client, src, 2*time.Second); err != nil {
					t.Errorf("client: %v", err)
				} else if d.PodAccepted(src) == 0 {
					t.Errorf("the pod did not see the client's own address %s", src)
				}
			}
			// The attacker's other addresses are not banned: the path works.
			if err := d.Connect(d.Attacker, "10.97.0.3", 2*time.Second); err != nil {
				t.Errorf("attacker address not banned: %v", err)
			}
			for _, tt := range []struct{ src, family string }{
				{testutil.AttackerV4, "ip"},
				{testutil.AttackerV6, "ip6"},
			} {
				dnat := d.DNATPackets(t, tt.family)
				var fwd map[string]uint64
				if tc.nft {
					fwd = h.nftCounters()
				}
				var xdpDrops uint64
				if tc.xdp {
					xdpDrops = h.xdpDropped()
				}
				if err := d.Connect(d.Attacker, tt.src, 1500*time.Millisecond); err == nil {
					t.Errorf("banned attacker %s connected to the pod", tt.src)
				}
				if n := d.PodAccepted(tt.src); n != 0 {
					t.Errorf("the pod accepted %d connections from the banned %s", n, tt.src)
				}
				moved := d.DNATPackets(t, tt.family) - dnat
				t.Logf("%s attacker: the DNAT rule saw %d packets", tt.family, moved)
				if tc.xdp && moved != 0 {
					t.Errorf("%s: the DNAT rule saw %d packets of the banned attacker; XDP should drop them before", tt.family, moved)
				}
				if !tc.xdp && moved == 0 {
					t.Errorf("%s: the DNAT rule saw nothing of the attacker; nftables drops after DNAT", tt.family)
				}
				if tc.xdp {
					if n := h.xdpDropped() - xdpDrops; n == 0 {
						t.Errorf("%s: XDP dropped nothing", tt.family)
					}
				}
				if tc.nft {
					after := h.nftCounters()
					fwdDrops := after[tt.family+" forward"] - fwd[tt.family+" forward"]
					inDrops := after[tt.family+" input"] - fwd[tt.family+" input"]
					switch {
					case tc.xdp && fwdDrops+inDrops != 0:
						t.Errorf("%s: nftables dropped %d+%d packets XDP should have dropped first", tt.family, fwdDrops, inDrops)
					case !tc.xdp && fwdDrops == 0:
						t.Errorf("%s: the forward hook dropped nothing", tt.family)
					case !tc.xdp && inDrops != 0:
						t.Errorf("%s: the input hook dropped %d packets of forwarded traffic", tt.family, inDrops)
					}
				}
			}
		})
	}
}

// xdpDropped reads the XDP drop counters from the pinned maps.
func (h *harness) xdpDropped() uint64 {
	h.t.Helper()
	out := h.xdpgate("stats", "--json")
	var st maps.Stats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		h.t.Fatalf("stats --json: %v\n%s", err, out)
	}
	return st.DropV4.Packets + st.DropV6.Packets
}

// foreignXDP attaches a program of somebody else's to dev in the host
// namespace through netlink, as `ip link set dev DEV xdp obj ...` does.
func foreignXDP(t *testing.T, h *harness, dev string) uint32 {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "foreign", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close() // the device holds its own reference
	if err := h.tp.Host.Do(func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, prog.FD(), 1<<2 /* XDP_FLAGS_DRV_MODE */)
	}); err != nil {
		t.Fatalf("attach a foreign XDP program to %s: %v", dev, err)
	}
	id := h.xdpAttached(dev)
	if id == 0 {
		t.Fatalf("no program on %s after attaching one", dev)
	}
	return id
}

// TestFallback makes XDP fail to attach: nftables then enforces on that
// interface, and the status and the metrics say so.
func TestFallback(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup prepares the host and returns the interface the agent
		// is given.
		setup func(t *testing.T, h *harness) string
		why   string // in the interface's error
	}{
		{
			name: "foreign program, no takeover",
			setup: func(t *testing.T, h *harness) string {
				id := foreignXDP(t, h, "veth0")
				t.Cleanup(func() {
					if got := h.xdpAttached("veth0"); got != id {
						t.Errorf("the foreign program %d on veth0 was replaced by %d", id, got)
					}
				})
				return "veth0"
			},
			why: "foreign XDP program",
		},
		{
			name: "native mode on a bridge",
			setup: func(t *testing.T, h *harness) string {
				// The client's traffic now reaches the host through a
				// bridge, which has no native XDP.
				host := h.tp.Host
				host.Run(t, "ip", "link", "add", "br0", "type", "bridge")
				host.Run(t, "ip", "addr", "flush", "dev", "veth0")
				host.Run(t, "ip", "link", "set", "veth0", "master", "br0")
				host.Run(t, "ip", "addr", "add", testutil.HostV4+"/24", "dev", "br0")
				host.Run(t, "ip", "addr", "add", testutil.HostV6+"/64", "dev", "br0", "nodad")
				host.Run(t, "ip", "link", "set", "br0", "up")
				return "br0"
			},
			why: "native mode",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "")
			dev := tc.setup(t, h)
			writeFile(t, h.config, strings.Replace(readFile(t, h.config), "interfaces: [veth0]", "interfaces: ["+dev+"]", 1))
			h.lapi.AddDecision(t, "--ip", "10.99.0.2", "--duration", "1h")
			h.lapi.AddDecision(t, "--ip", "fd00:99::2", "--duration", "1h")
			h.start()
			r := h.tp.Listen(t)

			testutil.WaitFor(t, 5*time.Second, "nftables to hold the startup set", func() bool {
				return h.nftHas("10.99.0.2") && h.nftHas("fd00:99::2")
			})
			before := h.nftCounters()
			for src, want := range map[string]int{"10.99.0.2": 0, "fd00:99::2": 0, "10.99.0.3": 10, "fd00:99::3": 10} {
				if n := h.delivered(r, src, 10); n != want {
					t.Errorf("%d of 10 datagrams from %s arrived, want %d", n, src, want)
				}
			}
			after := h.nftCounters()
			for _, k := range []string{"ip input", "ip6 input"} {
				if after[k]-before[k] < 10 {
					t.Errorf("nft counter %s: %d -> %d, want the 10 drops", k, before[k], after[k])
				}
			}

			st := h.statusJSON()
			if mode, why := st.interfaceMode(dev); mode != "nftables" || !strings.Contains(why, tc.why) {
				t.Errorf("status: %s is enforced by %q (%q), want nftables because of %q", dev, mode, why, tc.why)
			}
			if len(st.Attachments) != 0 {
				t.Errorf("status lists XDP attachments: %+v", st.Attachments)
			}
			if out := h.xdpgate("status"); !regexp.MustCompile(dev + `\s+nftables\s+-\s+\S`).MatchString(out) {
				t.Errorf("status does not show %s enforced by nftables, with the reason:\n%s", dev, out)
			}
			if v := h.metric("xdpgate_interface_enforcement", "interface="+dev, "mode=nftables"); v != 1 {
				t.Errorf("xdpgate_interface_enforcement{%s,nftables} = %v, want 1", dev, v)
			}
			if v := h.metric("xdpgate_nftables_dropped_packets_total", "family=ipv4", "hook=input"); v < 10 {
				t.Errorf("xdpgate_nftables_dropped_packets_total{ipv4,input} = %v, want the drops", v)
			}
		})
	}
}

// bystander creates somebody else's table in the host namespace, on the
// same hook as the agent's, and returns how nft lists it.
func bystander(t *testing.T, h *harness) string {
	t.Helper()
	host := h.tp.Host
	host.Run(t, "nft", "add", "table", "inet", "bystander")
	host.Run(t, "nft", "add", "set", "inet", "bystander", "keep", "{ type ipv4_addr; elements = { 192.0.2.9 }; }")
	host.Run(t, "nft", "add", "chain", "inet", "bystander", "input", "{ type filter hook input priority 0; policy accept; }")
	host.Run(t, "nft", "add", "rule", "inet", "bystander", "input", "ip", "saddr", "@keep", "counter", "drop")
	return host.Run(t, "nft", "-s", "list", "table", "inet", "bystander")
}

// expectDelivered sends 10 datagrams from each source and checks how many
// arrive.
func expectDelivered(t *testing.T, h *harness, r *testutil.Receiver, when string, want map[string]int) {
	t.Helper()
	for src, n := range want {
		if got := h.delivered(r, src, 10); got != n {
			t.Errorf("%s: %d of 10 datagrams from %s arrived, want %d", when, got, src, n)
		}
	}
}

// TestNFTStopAndUninstall stops the agent with SIGTERM: its tables stay
// and keep dropping while no agent runs; `xdpgate uninstall` removes them
// and nothing else.
func TestNFTStopAndUninstall(t *testing.T) {
	h := newHarness(t, "mode: nftables\n")
	other := bystander(t, h)
	h.lapi.AddDecision(t, "--ip", "10.99.0.2", "--duration", "1h")
	h.lapi.AddDecision(t, "--range", "10.99.0.4/31", "--duration", "1h")
	h.start()
	r := h.tp.Listen(t)
	banned := map[string]int{"10.99.0.2": 0, "10.99.0.4": 0, "10.99.0.3": 10}
	expectDelivered(t, h, r, "agent running", banned)

	h.stop()
	rs := h.tp.Host.Run(t, "nft", "list", "ruleset")
	for _, want := range []string{"table ip " + testTable4, "table ip6 " + testTable6, "10.99.0.2", "10.99.0.4/31", "table inet bystander"} {
		if !strings.Contains(rs, want) {
			t.Errorf("after SIGTERM the ruleset lacks %q:\n%s", want, rs)
		}
	}
	expectDelivered(t, h, r, "agent stopped", banned)

	out, code := h.xdpgateCode("uninstall")
	if code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	t.Logf("xdpgate uninstall:\n%s", out)
	rs = h.tp.Host.Run(t, "nft", "list", "ruleset")
	for _, gone := range []string{testTable4, testTable6} {
		if strings.Contains(rs, gone) {
			t.Errorf("after uninstall the ruleset still holds %s:\n%s", gone, rs)
		}
	}
	if got := h.tp.Host.Run(t, "nft", "-s", "list", "table", "inet", "bystander"); got != other {
		t.Errorf("uninstall changed another table:\nbefore:\n%s\nafter:\n%s", other, got)
	}
	expectDelivered(t, h, r, "uninstalled", map[string]int{"10.99.0.2": 10, "10.99.0.4": 10})
}

var startupApplied = regexp.MustCompile(`msg="decisions applied" startup=true .* upserts=(\d+) deletes=(\d+)`)

// TestNFTRestartUnderFire restarts an agent in mode nftables while a banned
// source sends without pause: not one datagram may get through, and a
// restarted agent finds its bans in place and writes nothing.
func TestNFTRestartUnderFire(t *testing.T) {
	h := newHarness(t, "mode: nftables\n")
	h.lapi.AddDecision(t, "--ip", "10.99.0.2", "--duration", "1h")
	h.lapi.AddDecision(t, "--range", "10.99.0.4/31", "--duration", "1h")
	h.start()
	r := h.tp.Listen(t)
	n := h.restartUnderFire("10.99.0.2", func(i int) {
		if m := startupApplied.FindStringSubmatch(h.logText()); m == nil || m[1] != "0" || m[2] != "0" {
			t.Errorf("restart %d: the startup set should find everything in place and write nothing; log:\n%s", i, h.logText())
		}
	})
	if got := r.Count("10.99.0.2"); got != 0 {
		t.Errorf("%d of %d datagrams from the banned source got through two restarts", got, n)
	} else {
		t.Logf("0 of %d datagrams got through two agent restarts", n)
	}
	expectDelivered(t, h, r, "after the restarts", map[string]int{"10.99.0.4": 0, "10.99.0.3": 10})
}
