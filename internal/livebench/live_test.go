package livebench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/frame"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/nftfallback"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// The bench topology: a sender namespace whose veth floods the node's
// veth. The node holds xdpgate's XDP program (attached for the XDP cases)
// and the nftables backend's tables (always present; in the XDP cases
// nothing banned reaches them), a counting table that sees what got past
// enforcement, and, for the service cases, a DNAT table as kube-proxy
// would have.
//
//	sender netns                      node netns
//	  ls<id> 10.200.0.2/24 ══ veth ══ lr<id> 10.200.0.1/24  (XDP, GRO, threaded NAPI)
//	                                  lbpod  10.202.0.1/24  (a veth: the pod network)
//	                                  service 10.201.0.80 ─DNAT→ pod 10.202.0.2
const (
	nodeAddr  = "10.200.0.1"
	sendAddr  = "10.200.0.2"
	svcAddr   = "10.201.0.80"
	podAddr   = "10.202.0.2"
	floodPort = 9001
	legitPort = 9000
	slotCount = 1 << 17
)

// v4Exact overrides the capacity of the exact IPv4 ban map (maps.ipv4_exact),
// to see what the size of its bucket array costs a drop.
var v4Exact = flag.Uint("live.v4-exact", 0, "capacity of the exact IPv4 ban map (default: the agent's default, 1M)")

// countTable counts, after xdpgate's chains (priority -10), the frames
// that got through to the node's input or to the forward path, by port:
// legitimate frames and any banned frame that leaked. It drops them there,
// so that nothing answers and nothing is sent on.
const countTable = `
table ip lbcount {
	counter legit_in {}
	counter flood_in {}
	counter legit_fwd {}
	counter flood_fwd {}
	chain count_input {
		type filter hook input priority 100; policy accept;
		udp dport 9000 counter name legit_in drop
		udp dport 9001 counter name flood_in drop
	}
	chain count_forward {
		type filter hook forward priority 100; policy accept;
		udp dport 9000 counter name legit_fwd drop
		udp dport 9001 counter name flood_fwd drop
	}
}
`

// svcTable is a service address DNAT'd to a pod, as kube-proxy programs
// it: with it, every packet is tracked by conntrack and crosses the nat
// prerouting chain, then the forward hook.
const svcTable = `
table ip lbsvc {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.201.0.80 counter dnat to 10.202.0.2
	}
}
`

type benchConfig struct {
	bans       int
	rounds     int
	warm, dur  time.Duration
	legitEvery int
	// fifo gives the receiving thread real-time precedence, as the
	// softirq of a NIC has; the benchmark sets it, the tests leave the
	// machine's scheduling alone.
	fifo bool
}

// dropper is what drops the flood in a scenario.
type dropper int

const (
	// dropAll is a bare XDP_DROP of every frame: what the receiving veth
	// costs by itself, the floor under any XDP program.
	dropAll dropper = iota
	dropXDP         // xdpgate's XDP program
	dropNFT         // xdpgate's nftables fallback
)

// scenario is one way of dropping the same flood.
type scenario struct {
	name string
	by   dropper
	// svc sends the flood to the service address, DNAT'd to the pod:
	// forwarded, it crosses the forward hook rather than input.
	svc bool
	// conntrack loads the service's DNAT table, as on a Kubernetes node:
	// conntrack then tracks every packet, whatever its destination.
	conntrack bool
}

var scenarios = []scenario{
	{"floor: bare XDP_DROP", dropAll, false, false},
	{"xdp, to the node", dropXDP, false, false},
	{"nftables input", dropNFT, false, false},
	{"nftables input, conntrack on", dropNFT, false, true},
	{"xdp, to a service (DNAT)", dropXDP, true, true},
	{"nftables forward (DNAT)", dropNFT, true, true},
}

type bench struct {
	tb               testing.TB
	cfg              benchConfig
	sender, node     *testutil.NetNS
	sdev, rdev       string
	sIndex, rIndex   int
	sendCPU, recvCPU int

	bans  []netip.Addr
	floor *ebpf.Program
	gen   *Generator
	nft   *nftfallback.Backend
	dp    *loader.Dataplane
	xdp   *maps.Maps
	count *nftables.Conn
}

// cpus returns the two CPUs the benchmark uses: the first two the process
// may run on.
func cpus(tb testing.TB) (int, int) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		tb.Fatal(err)
	}
	var got []int
	for c := 0; c < 1024 && len(got) < 2; c++ {
		if set.IsSet(c) {
			got = append(got, c)
		}
	}
	if len(got) < 2 {
		testutil.SkipOrFail(tb, "needs two CPUs, one to send and one to receive; have %d", set.Count())
	}
	return got[0], got[1]
}

func newBench(tb testing.TB, cfg benchConfig) *bench {
	tb.Helper()
	testutil.Privileged(tb)
	testutil.NeedCommand(tb, "nft")
	b := &bench{tb: tb, cfg: cfg}
	b.sendCPU, b.recvCPU = cpus(tb)
	b.sender, b.node = testutil.NewNetNS(tb), testutil.NewNetNS(tb)
	var id [3]byte
	_, _ = rand.Read(id[:])
	// Short, unique names: the NAPI thread is found by "napi/<dev>-".
	b.sdev, b.rdev = "ls"+hex.EncodeToString(id[:]), "lr"+hex.EncodeToString(id[:])
	testutil.Run(tb, "ip", "link", "add", b.sdev, "netns", b.sender.Name, "type", "veth", "peer", "name", b.rdev, "netns", b.node.Name)
	// No IPv6 on the link: nothing but the generator's frames crosses it.
	b.sender.Run(tb, "sysctl", "-qw", "net.ipv6.conf."+b.sdev+".disable_ipv6=1")
	b.node.Run(tb, "sysctl", "-qw", "net.ipv6.conf."+b.rdev+".disable_ipv6=1")
	b.sender.Run(tb, "ip", "addr", "add", sendAddr+"/24", "dev", b.sdev)
	b.sender.Run(tb, "ip", "link", "set", b.sdev, "up")
	n := b.node
	n.Run(tb, "ip", "addr", "add", nodeAddr+"/24", "dev", b.rdev)
	n.Run(tb, "ip", "link", "set", b.rdev, "up")
	n.Run(tb, "ip", "link", "add", "lbpod", "type", "veth", "peer", "name", "lbpod1")
	n.Run(tb, "ip", "addr", "add", "10.202.0.1/24", "dev", "lbpod")
	n.Run(tb, "ip", "link", "set", "lbpod", "up")
	n.Run(tb, "ip", "link", "set", "lbpod1", "up")
	n.Run(tb, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	smac := b.mac(b.sender, b.sdev)
	rmac := b.mac(n, b.rdev)
	// Every source has a route back, so no reverse-path check refuses one.
	n.Run(tb, "ip", "neigh", "replace", sendAddr, "lladdr", smac.String(), "dev", b.rdev, "nud", "permanent")
	n.Run(tb, "ip", "route", "add", "default", "via", sendAddr, "dev", b.rdev)
	b.sIndex, b.rIndex = b.ifindex(b.sender, b.sdev), b.ifindex(n, b.rdev)

	// NAPI for the receiving veth without XDP (GRO, as a NIC has it), in
	// a thread of its own.
	if err := n.Do(func() error { return EnableGRO(b.rdev) }); err != nil {
		tb.Fatal(err)
	}
	n.Run(tb, "sh", "-c", "echo 1 > /sys/class/net/"+b.rdev+"/threaded")
	b.nftFile(countTable)

	start := time.Now()
	b.bans = BanSet(cfg.bans, 1)
	entries := make([]decision.Entry, len(b.bans))
	exp := time.Now().Add(4 * time.Hour)
	for i, a := range b.bans {
		entries[i] = decision.Entry{Prefix: netip.PrefixFrom(a, 32), Origin: "CAPI", Expiry: exp}
	}
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	var err error
	b.nft, err = nftfallback.New(nftfallback.Config{NetNS: int(n.Handle)}, quiet)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.nft.Close() })
	if err := b.nft.Ensure(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := b.nft.SetAllowlist(ctx, Allowlist()); err != nil {
		tb.Fatal(err)
	}
	if err := b.nft.Apply(ctx, entries, nil); err != nil {
		tb.Fatal(err)
	}
	nftTook := time.Since(start)

	start = time.Now()
	sizes := loader.DefaultSizes()
	if *v4Exact != 0 {
		sizes.V4Exact = uint32(*v4Exact)
	}
	b.dp, err = loader.Load(loader.Options{Logger: quiet, Sizes: sizes})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(b.dp.Close)
	if b.xdp, err = maps.New(&b.dp.Maps); err != nil {
		tb.Fatal(err)
	}
	if err := b.xdp.SetAllowlist(ctx, Allowlist()); err != nil {
		tb.Fatal(err)
	}
	if err := b.xdp.Apply(ctx, entries, nil); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("%d bans loaded: nftables in %v, XDP maps in %v", len(entries), nftTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	if b.floor, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "lb_drop_all", Type: ebpf.XDP, License: "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpDrop), asm.Return()},
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.floor.Close() })
	if b.gen, err = NewGenerator(Frame(smac, rmac), slotCount); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(b.gen.Close)
	if b.count, err = nftables.New(nftables.WithNetNSFd(int(n.Handle)), nftables.AsLasting()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.count.CloseLasting() })
	return b
}

func (b *bench) mac(ns *testutil.NetNS, dev string) net.HardwareAddr {
	b.tb.Helper()
	m, err := net.ParseMAC(strings.TrimSpace(ns.Run(b.tb, "cat", "/sys/class/net/"+dev+"/address")))
	if err != nil {
		b.tb.Fatal(err)
	}
	return m
}

func (b *bench) ifindex(ns *testutil.NetNS, dev string) int {
	b.tb.Helper()
	var idx int
	if err := ns.Do(func() error {
		i, err := net.InterfaceByName(dev)
		if err == nil {
			idx = i.Index
		}
		return err
	}); err != nil {
		b.tb.Fatal(err)
	}
	return idx
}

// nftFile loads a ruleset fragment into the node's namespace.
func (b *bench) nftFile(rules string) {
	b.tb.Helper()
	p := filepath.Join(b.tb.TempDir(), "rules.nft")
	if err := os.WriteFile(p, []byte(rules), 0o600); err != nil {
		b.tb.Fatal(err)
	}
	b.node.Run(b.tb, "nft", "-f", p)
}

// receiver finds the NAPI threads of the receiving veth (they are made
// anew when XDP comes or goes), pins them to the receiving CPU and gives
// them a softirq's precedence.
func (b *bench) receiver() []int {
	b.tb.Helper()
	pids, err := NAPIThreads(b.rdev)
	if err != nil {
		b.tb.Fatal(err)
	}
	if err := Pin(pids, b.recvCPU); err != nil {
		b.tb.Fatal(err)
	}
	if b.cfg.fifo {
		if err := SetFIFO(pids); err != nil {
			b.tb.Fatal(err)
		}
	}
	return pids
}

// snap is every counter a case reads, at one moment.
type snap struct {
	at                                   time.Time
	emitted, taken                       uint64
	xdpDrop, nftInput, nftForward        uint64
	legitIn, legitFwd, floodIn, floodFwd uint64
	recvCPU, sendCPU                     time.Duration
	recvStat                             CPUTimes // the receiving CPU, all tasks
}

func (b *bench) snapshot(pids []int) snap {
	b.tb.Helper()
	s := snap{at: time.Now()}
	var err error
	if s.recvStat, err = ReadCPU(b.recvCPU); err != nil {
		b.tb.Fatal(err)
	}
	if s.recvCPU, err = ThreadCPU(pids); err != nil {
		b.tb.Fatal(err)
	}
	if tid := b.gen.Thread(); tid != 0 {
		s.sendCPU, _ = ThreadCPU([]int{tid})
	}
	if s.emitted, err = b.gen.Emitted(); err != nil {
		b.tb.Fatal(err)
	}
	if err := b.node.Do(func() error {
		l, err := netlink.LinkByName(b.rdev)
		if err != nil {
			return err
		}
		s.taken = l.Attrs().Statistics.RxPackets
		return nil
	}); err != nil {
		b.tb.Fatal(err)
	}
	st, err := b.xdp.Stats()
	if err != nil {
		b.tb.Fatal(err)
	}
	s.xdpDrop = st.DropV4.Packets
	cs, err := b.nft.Counters()
	if err != nil {
		b.tb.Fatal(err)
	}
	for _, c := range cs {
		if c.Family == "ip" && c.Hook == "input" {
			s.nftInput = c.Packets
		}
		if c.Family == "ip" && c.Hook == "forward" {
			s.nftForward = c.Packets
		}
	}
	counts := b.counters("lbcount")
	s.legitIn, s.legitFwd, s.floodIn, s.floodFwd = counts["legit_in"], counts["legit_fwd"], counts["flood_in"], counts["flood_fwd"]
	return s
}

// counters reads the named counters of a table of the node.
func (b *bench) counters(table string) map[string]uint64 {
	b.tb.Helper()
	objs, err := b.count.GetNamedObjects(&nftables.Table{Name: table, Family: nftables.TableFamilyIPv4})
	if err != nil {
		b.tb.Fatalf("read counters of %s: %v", table, err)
	}
	out := map[string]uint64{}
	for _, o := range objs {
		if n, ok := o.(*nftables.NamedObj); ok {
			if c, ok := n.Obj.(*expr.Counter); ok {
				out[n.Name] = c.Packets
			}
		}
	}
	return out
}

// result is what one scenario measured, summed over rounds.
type result struct {
	scenario
	wall, recvCPU, sendCPU          time.Duration
	kernelTicks                     uint64 // system, irq and softirq ticks of the receiving CPU, all tasks
	emitted, taken, dropped         uint64
	legitSent, legitThrough, leaked uint64
	otherDrops                      uint64 // drops by the backend that should not see the flood
	perRound                        []float64
}

func (r *result) add(s scenario, a, z snap, legitEvery int) {
	r.scenario = s
	r.wall += z.at.Sub(a.at)
	r.recvCPU += z.recvCPU - a.recvCPU
	r.sendCPU += z.sendCPU - a.sendCPU
	r.kernelTicks += z.recvStat.System + z.recvStat.IRQ + z.recvStat.SoftIRQ - a.recvStat.System - a.recvStat.IRQ - a.recvStat.SoftIRQ
	r.emitted += z.emitted - a.emitted
	r.taken += z.taken - a.taken
	r.legitSent += LegitEmitted(z.emitted, legitEvery) - LegitEmitted(a.emitted, legitEvery)
	var dropped uint64
	nftIn, nftFwd, xdp := z.nftInput-a.nftInput, z.nftForward-a.nftForward, z.xdpDrop-a.xdpDrop
	switch {
	case s.by == dropAll:
		dropped = z.taken - a.taken
		r.otherDrops += xdp + nftIn + nftFwd
	case s.by == dropXDP:
		dropped = xdp
		r.otherDrops += nftIn + nftFwd
	case s.svc:
		dropped = nftFwd
		r.otherDrops += xdp + nftIn
	default:
		dropped = nftIn
		r.otherDrops += xdp + nftFwd
	}
	r.dropped += dropped
	if s.svc {
		r.legitThrough += z.legitFwd - a.legitFwd
		r.leaked += z.floodFwd - a.floodFwd
	} else {
		r.legitThrough += z.legitIn - a.legitIn
		r.leaked += z.floodIn - a.floodIn
	}
	if cpu := (z.recvCPU - a.recvCPU).Seconds(); cpu > 0 {
		r.perRound = append(r.perRound, float64(dropped)/cpu)
	}
}

// dropsPerCPUSecond is the figure of merit: packets dropped per second of
// the receiving CPU's time.
func (r *result) dropsPerCPUSecond() float64 {
	if r.recvCPU <= 0 {
		return 0
	}
	return float64(r.dropped) / r.recvCPU.Seconds()
}

// run floods the node in one scenario and measures it.
func (b *bench) run(s scenario, r *result) {
	b.tb.Helper()
	dst := netip.MustParseAddr(nodeAddr)
	if s.svc {
		dst = netip.MustParseAddr(svcAddr)
	}
	if s.conntrack || s.svc {
		b.nftFile(svcTable)
		defer b.node.Run(b.tb, "nft", "delete", "table", "ip", "lbsvc")
	}
	if prog := map[dropper]*ebpf.Program{dropAll: b.floor, dropXDP: b.dp.Program}[s.by]; prog != nil {
		var l link.Link
		if err := b.node.Do(func() error {
			var err error
			l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: b.rIndex, Flags: link.XDPDriverMode})
			return err
		}); err != nil {
			b.tb.Fatalf("attach XDP to %s: %v", b.rdev, err)
		}
		defer l.Close()
	}
	if err := b.gen.SetSlots(Mix(slotCount, b.bans, LegitSources(64), b.cfg.legitEvery, dst, floodPort, legitPort)); err != nil {
		b.tb.Fatal(err)
	}
	pids := b.receiver()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.gen.Run(ctx, b.sender.Handle, b.sIndex, b.sendCPU) }()
	stop := func() error { cancel(); return <-done }
	select {
	case err := <-done:
		b.tb.Fatalf("generator stopped: %v", err)
	case <-time.After(b.cfg.warm):
	}
	a := b.snapshot(pids)
	time.Sleep(b.cfg.dur)
	z := b.snapshot(pids)
	if err := stop(); err != nil {
		b.tb.Fatal(err)
	}
	r.add(s, a, z, b.cfg.legitEvery)
}

// runAll measures every scenario, rounds times, interleaved, so that
// whatever else the machine does weighs on all of them alike.
func runAll(tb testing.TB, cfg benchConfig) []*result {
	b := newBench(tb, cfg)
	res := make([]*result, len(scenarios))
	for i := range res {
		res[i] = &result{}
	}
	for round := 0; round < cfg.rounds; round++ {
		for i, s := range scenarios {
			b.run(s, res[i])
		}
	}
	var sendCPU time.Duration
	var emitted uint64
	for _, r := range res {
		sendCPU += r.sendCPU
		emitted += r.emitted
	}
	tb.Logf("sender on CPU %d (%.0f ns of its CPU time a frame), receiving NAPI thread on CPU %d; %d bans, 1 frame in %d from a legitimate source; %d round(s) of %v per scenario",
		b.sendCPU, float64(sendCPU.Nanoseconds())/float64(max(emitted, 1)), b.recvCPU, cfg.bans, cfg.legitEvery, cfg.rounds, cfg.dur)
	return res
}

// userHZ is the unit of /proc/stat: USER_HZ, 100 on every Linux ABI.
const userHZ = 100

func mpps(n uint64, d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(n)/d.Seconds()/1e6)
}

func table(res []*result) string {
	var sb strings.Builder
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\toffered Mpps\treceived Mpps\tdropped Mpps\treceiver thread\tCPU kernel time\tns/drop\tdrops per CPU-s\tlegit through\tleaked\t")
	for _, r := range res {
		legit := fmt.Sprintf("%.1f%%", 100*float64(r.legitThrough)/float64(max(r.legitSent, 1)))
		if r.by == dropAll {
			legit = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%.0f%%\t%.0f%%\t%.0f\t%.2fM\t%s\t%d\t\n",
			r.name, mpps(r.emitted, r.wall), mpps(r.taken, r.wall), mpps(r.dropped, r.wall),
			100*r.recvCPU.Seconds()/r.wall.Seconds(), 100*float64(r.kernelTicks)/userHZ/r.wall.Seconds(),
			float64(r.recvCPU.Nanoseconds())/float64(max(r.dropped, 1)),
			r.dropsPerCPUSecond()/1e6, legit, r.leaked)
	}
	w.Flush()
	return sb.String()
}

// check fails on what would make the numbers meaningless: nothing
// dropped, a banned frame let through, the wrong backend dropping, no
// legitimate frame through.
func check(tb testing.TB, res []*result) {
	tb.Helper()
	for _, r := range res {
		if r.dropped == 0 || r.recvCPU <= 0 {
			tb.Errorf("%s: dropped %d packets in %v of receiver CPU", r.name, r.dropped, r.recvCPU)
		}
		if r.leaked != 0 {
			tb.Errorf("%s: %d banned frames got through", r.name, r.leaked)
		}
		if r.otherDrops != 0 {
			tb.Errorf("%s: %d packets dropped somewhere else than where this scenario drops", r.name, r.otherDrops)
		}
		if r.by != dropAll && r.legitThrough == 0 {
			tb.Errorf("%s: no legitimate frame got through (%d sent)", r.name, r.legitSent)
		}
	}
}

// BenchmarkLiveDrop floods a veth with 64-byte frames from 100k banned
// sources and compares, in one run, the packets dropped per second of the
// receiving CPU by xdpgate's XDP program and by its nftables fallback in
// the input hook and in the forward hook (traffic DNAT'd to a pod, as on
// Kubernetes), and the legitimate frames that get through meanwhile.
// `make bench-live` runs it; docs/live-benchmark.md explains it.
func BenchmarkLiveDrop(b *testing.B) {
	cfg := benchConfig{bans: 100_000, rounds: 3, warm: time.Second, dur: 4 * time.Second, legitEvery: 1024, fifo: true}
	for i := 0; i < b.N; i++ {
		res := runAll(b, cfg)
		check(b, res)
		b.Logf("\n%s", table(res))
		floor, xdpNode, nftIn, nftInCT, xdpSvc, nftFwd := res[0], res[1], res[2], res[3], res[4], res[5]
		for _, c := range []struct {
			what     string
			xdp, nft *result
			unit     string
		}{
			{"nftables input", xdpNode, nftIn, "xdp/nft-input"},
			{"nftables input, conntrack on", xdpNode, nftInCT, "xdp/nft-input-ct"},
			{"nftables forward (DNAT)", xdpSvc, nftFwd, "xdp/nft-forward"},
		} {
			ratio := c.xdp.dropsPerCPUSecond() / c.nft.dropsPerCPUSecond()
			b.Logf("XDP / %-29s %.1fx the drops per CPU-second (per round: %s vs %s)", c.what+":", ratio, rounds(c.xdp), rounds(c.nft))
			b.ReportMetric(ratio, c.unit)
		}
		b.Logf("the receiving veth alone costs %.0f ns a frame (a bare XDP_DROP), in every scenario", float64(floor.recvCPU.Nanoseconds())/float64(max(floor.dropped, 1)))
		b.ReportMetric(xdpNode.dropsPerCPUSecond(), "xdp-drops/cpu-s")
		b.ReportMetric(nftIn.dropsPerCPUSecond(), "nft-input-drops/cpu-s")
		b.ReportMetric(nftFwd.dropsPerCPUSecond(), "nft-forward-drops/cpu-s")
	}
}

func rounds(r *result) string {
	var s []string
	for _, v := range r.perRound {
		s = append(s, fmt.Sprintf("%.2fM", v/1e6))
	}
	return strings.Join(s, " ")
}

// TestLiveDrop runs every scenario briefly with 10k bans: each backend
// drops the flood where it should, no banned frame gets through and
// legitimate frames do. It checks the harness, not the speed.
func TestLiveDrop(t *testing.T) {
	res := runAll(t, benchConfig{bans: 10_000, rounds: 1, warm: 300 * time.Millisecond, dur: time.Second, legitEvery: 64})
	check(t, res)
	t.Logf("\n%s", table(res))
}

// TestGenerator floods the node from legitimate sources and checks that
// its IP stack takes every frame, delivered to it or forwarded: addresses,
// port and header checksum written right, and written again on every
// frame (the stack rewrites forwarded frames in place, and live-frame mode
// hands the same pages out again).
func TestGenerator(t *testing.T) {
	b := newBench(t, benchConfig{bans: 16})
	pids := b.receiver()
	for _, tc := range []struct {
		name    string
		dst     string
		through func(a, z snap) uint64
	}{
		{"to the node", nodeAddr, func(a, z snap) uint64 { return z.legitIn - a.legitIn }},
		{"forwarded", podAddr, func(a, z snap) uint64 { return z.legitFwd - a.legitFwd }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var slots []Slot
			for _, src := range LegitSources(8) {
				slots = append(slots, Slot{Src: src, Dst: netip.MustParseAddr(tc.dst), DstPort: legitPort})
			}
			if err := b.gen.SetSlots(slots); err != nil {
				t.Fatal(err)
			}
			errsBefore := b.hdrErrors()
			a := b.snapshot(pids)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if err := b.gen.Run(ctx, b.sender.Handle, b.sIndex, -1); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			z := b.snapshot(pids)
			taken, through := z.taken-a.taken, tc.through(a, z)
			t.Logf("emitted %d frames, the node's veth took %d, %d got through its hooks", z.emitted-a.emitted, taken, through)
			if taken == 0 || through != taken {
				t.Errorf("the node took %d frames and %d got through its hooks; want all of them", taken, through)
			}
			if n := b.hdrErrors() - errsBefore; n != 0 {
				t.Errorf("%d frames with a bad IP header", n)
			}
		})
	}
}

// hdrErrors returns the node's count of IPv4 packets refused for a bad
// header.
func (b *bench) hdrErrors() uint64 {
	b.tb.Helper()
	out := b.node.Run(b.tb, "cat", "/proc/net/snmp")
	lines := strings.Split(out, "\n")
	if len(lines) < 2 {
		b.tb.Fatalf("/proc/net/snmp: %q", out)
	}
	names, vals := strings.Fields(lines[0]), strings.Fields(lines[1])
	for i, n := range names {
		if n == "InHdrErrors" && i < len(vals) {
			v, err := strconv.ParseUint(vals[i], 10, 64)
			if err != nil {
				b.tb.Fatal(err)
			}
			return v
		}
	}
	b.tb.Fatal("no InHdrErrors in /proc/net/snmp")
	return 0
}

// TestSlotValues checks the slot encoding against a frame built by hand.
func TestSlotValues(t *testing.T) {
	src, _ := net.ParseMAC("02:00:00:00:00:01")
	dst, _ := net.ParseMAC("02:00:00:00:00:02")
	f := apply(Frame(src, dst), Slot{Src: netip.MustParseAddr("192.0.2.7"), Dst: netip.MustParseAddr("10.200.0.1"), DstPort: 9000})
	if len(f) != FrameLen {
		t.Fatalf("frame of %d bytes", len(f))
	}
	if got := frame.Checksum(f[14:34]); got != 0 {
		t.Errorf("header checksum does not verify: %#x", got)
	}
	if got := netip.AddrFrom4([4]byte(f[offIPSrc : offIPSrc+4])); got.String() != "192.0.2.7" {
		t.Errorf("source %s", got)
	}
	if got := int(f[offUDPDst])<<8 | int(f[offUDPDst+1]); got != 9000 {
		t.Errorf("port %d", got)
	}
	if _, err := NewGenerator(Frame(src, dst), 1000); !errors.Is(err, ErrSlots) {
		t.Errorf("slot table of 1000: %v, want ErrSlots", err)
	}
}
