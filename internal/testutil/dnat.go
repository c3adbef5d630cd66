package testutil

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// DNAT is the path of a Kubernetes service with externalTrafficPolicy
// Local: clients reach a node, whose nftables DNAT sends the service
// address on to a pod behind it, so that their traffic crosses the node's
// forward hook, not input, with the client's own address. It builds on a
// Topology: Node is its Host, Client its Client.
//
//	client    veth1 10.99.0.2-4/24, fd00:99::2-3/64 ══ veth0 10.99.0.1/24, fd00:99::1/64  node
//	attacker  veth3 10.97.0.2-4/24, fd00:97::2-3/64 ══ veth2 10.97.0.1/24, fd00:97::1/64  node
//	pod       veth5 10.96.0.2/24,   fd00:96::2/64   ══ veth4 10.96.0.1/24, fd00:96::1/64  node
//
// The node forwards (ip_forward=1 and IPv6 forwarding, in its namespace
// only) and holds table inet xdpgate_svc: a prerouting chain of type nat
// at priority dstnat that DNATs ServiceV4:ServicePort and
// [ServiceV6]:ServicePort to the pod's PodPort, through the named counters
// dnat_v4 and dnat_v6. The pod runs an HTTP server on PodPort that answers
// every request with "pod\n". Clients and attacker route everything
// through the node; static neighbour entries keep ARP and neighbour
// discovery out of the way. xdpgate attaches to veth0 and veth2.
type DNAT struct {
	Client, Attacker, Node, Pod *NetNS

	mu   sync.Mutex
	seen map[netip.Addr]int // connections the pod accepted, by peer
}

// Addresses of the DNAT topology (the client's are the Topology's).
const (
	ClientV4    = "10.99.0.2"
	ClientV6    = "fd00:99::2"
	AttackerV4  = "10.97.0.2"
	AttackerV6  = "fd00:97::2"
	NodeV4      = HostV4 // the node's address towards the client
	ServiceV4   = "10.95.0.80"
	ServiceV6   = "fd00:95::80"
	ServicePort = 80
	PodV4       = "10.96.0.2"
	PodV6       = "fd00:96::2"
	PodPort     = 8080

	// DNATTable is the node's table holding the service's DNAT rules.
	DNATTable = "xdpgate_svc"
)

// NewDNAT creates the client, attacker, node and pod namespaces and the
// service.
func NewDNAT(t testing.TB) *DNAT {
	t.Helper()
	return AddDNAT(t, NewTopology(t))
}

// AddDNAT turns a Topology into the DNAT topology: it adds the attacker
// and the pod and makes the Host the node.
func AddDNAT(t testing.TB, tp *Topology) *DNAT {
	t.Helper()
	NeedCommand(t, "nft")
	d := &DNAT{Client: tp.Client, Node: tp.Host, Attacker: NewNetNS(t), Pod: NewNetNS(t), seen: map[netip.Addr]int{}}
	d.link(t, d.Attacker, "veth2", "veth3", "10.97.0.1", "fd00:97::1",
		[]string{"10.97.0.2/24", "10.97.0.3/24", "10.97.0.4/24"}, []string{"fd00:97::2/64", "fd00:97::3/64"})
	d.link(t, d.Pod, "veth4", "veth5", "10.96.0.1", "fd00:96::1",
		[]string{PodV4 + "/24"}, []string{PodV6 + "/64"})
	d.route(t, d.Client, "veth1", "veth0", HostV4, HostV6)
	d.route(t, d.Attacker, "veth3", "veth2", "10.97.0.1", "fd00:97::1")
	d.route(t, d.Pod, "veth5", "veth4", "10.96.0.1", "fd00:96::1")
	// The pod's neighbours, seen from the node: replies and forwarded
	// packets go out at once.
	podMAC := mac(t, d.Pod, "veth5")
	d.Node.Run(t, "ip", "neigh", "replace", PodV4, "lladdr", podMAC, "dev", "veth4", "nud", "permanent")
	d.Node.Run(t, "ip", "neigh", "replace", PodV6, "lladdr", podMAC, "dev", "veth4", "nud", "permanent")
	d.Node.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	d.Node.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	d.nft(t, fmt.Sprintf(`table inet %[1]s {
	counter dnat_v4 {}
	counter dnat_v6 {}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[2]s tcp dport %[3]d counter name dnat_v4 dnat ip to %[4]s:%[5]d
		ip6 daddr %[6]s tcp dport %[3]d counter name dnat_v6 dnat ip6 to [%[7]s]:%[5]d
	}
}
`, DNATTable, ServiceV4, ServicePort, PodV4, PodPort, ServiceV6, PodV6))
	d.serve(t)
	return d
}

// link joins ns to the node with a veth pair: nodeDev in the node with
// nodeV4/24 and nodeV6/64, peerDev in ns with the addresses given.
func (d *DNAT) link(t testing.TB, ns *NetNS, nodeDev, peerDev, nodeV4, nodeV6 string, v4, v6 []string) {
	t.Helper()
	Run(t, "ip", "link", "add", nodeDev, "netns", d.Node.Name, "type", "veth", "peer", "name", peerDev, "netns", ns.Name)
	d.Node.Run(t, "ip", "addr", "add", nodeV4+"/24", "dev", nodeDev)
	d.Node.Run(t, "ip", "addr", "add", nodeV6+"/64", "dev", nodeDev, "nodad")
	d.Node.Run(t, "ip", "link", "set", nodeDev, "up")
	for _, a := range v4 {
		ns.Run(t, "ip", "addr", "add", a, "dev", peerDev)
	}
	for _, a := range v6 {
		ns.Run(t, "ip", "addr", "add", a, "dev", peerDev, "nodad")
	}
	ns.Run(t, "ip", "link", "set", peerDev, "up")
}

// route sends everything of ns through the node, whose device facing ns
// is nodeDev, and gives the node static neighbour entries for ns's
// addresses.
func (d *DNAT) route(t testing.TB, ns *NetNS, dev, nodeDev, gw4, gw6 string) {
	t.Helper()
	nodeMAC := mac(t, d.Node, nodeDev)
	ns.Run(t, "ip", "neigh", "replace", gw4, "lladdr", nodeMAC, "dev", dev, "nud", "permanent")
	ns.Run(t, "ip", "neigh", "replace", gw6, "lladdr", nodeMAC, "dev", dev, "nud", "permanent")
	ns.Run(t, "ip", "route", "add", "default", "via", gw4, "dev", dev)
	ns.Run(t, "ip", "-6", "route", "add", "default", "via", gw6, "dev", dev)
	peerMAC := mac(t, ns, dev)
	for _, a := range addrsOf(t, ns, dev) {
		d.Node.Run(t, "ip", "neigh", "replace", a, "lladdr", peerMAC, "dev", nodeDev, "nud", "permanent")
	}
}

func mac(t testing.TB, ns *NetNS, dev string) string {
	t.Helper()
	return strings.TrimSpace(ns.Run(t, "cat", "/sys/class/net/"+dev+"/address"))
}

// addrsOf lists the global addresses of dev, without prefix length.
func addrsOf(t testing.TB, ns *NetNS, dev string) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(ns.Run(t, "ip", "-o", "addr", "show", "dev", dev, "scope", "global"), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" || f[i] == "inet6" {
				if p, err := netip.ParsePrefix(f[i+1]); err == nil {
					out = append(out, p.Addr().String())
				}
			}
		}
	}
	return out
}

// nft loads a ruleset fragment into the node.
func (d *DNAT) nft(t testing.TB, rules string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "dnat.nft")
	if err := os.WriteFile(p, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Node.Run(t, "nft", "-f", p)
}

// serve runs the pod's HTTP server until the test ends. It answers every
// request with "pod\n" and counts connections by peer.
func (d *DNAT) serve(t testing.TB) {
	t.Helper()
	var ln net.Listener
	if err := d.Pod.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", PodPort))
		return err
	}); err != nil {
		t.Fatalf("pod server: %v", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, "pod\n")
		}),
		ReadHeaderTimeout: 2 * time.Second,
		ConnState: func(c net.Conn, s http.ConnState) {
			if s != http.StateNew {
				return
			}
			if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
				d.mu.Lock()
				d.seen[a.AddrPort().Addr().Unmap()]++
				d.mu.Unlock()
			}
		},
	}
	t.Cleanup(func() { srv.Close() })
	go func() { _ = srv.Serve(ln) }()
}

// Connect makes an HTTP request from src, an address of ns, to the service
// (of src's family) and checks the pod's answer. It returns nil when the
// pod answered, an error when it did not within timeout.
func (d *DNAT) Connect(ns *NetNS, src string, timeout time.Duration) error {
	s := netip.MustParseAddr(src)
	dst := netip.AddrPortFrom(netip.MustParseAddr(ServiceV4), ServicePort)
	if s.Is6() {
		dst = netip.AddrPortFrom(netip.MustParseAddr(ServiceV6), ServicePort)
	}
	var conn net.Conn
	if err := ns.Do(func() error {
		dialer := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(s, 0))}
		var err error
		conn, err = dialer.Dial("tcp", dst.String())
		return err
	}); err != nil {
		return fmt.Errorf("connect from %s to %s: %w", src, dst, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: service\r\nConnection: close\r\n\r\n"); err != nil {
		return fmt.Errorf("send a request to %s: %w", dst, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fmt.Errorf("read the pod's answer from %s: %w", dst, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read the pod's answer from %s: %w", dst, err)
	}
	if resp.StatusCode != http.StatusOK || string(body) != "pod\n" {
		return fmt.Errorf("unexpected answer %s %q from %s", resp.Status, body, dst)
	}
	return nil
}

// PodAccepted returns how many connections the pod accepted from peer:
// behind the DNAT, the pod sees the client's own address.
func (d *DNAT) PodAccepted(peer string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen[netip.MustParseAddr(peer)]
}

// DNATPackets returns how many packets the service's DNAT rule of family
// "ip" or "ip6" has rewritten: the first packet of every connection
// attempt that reached the node's prerouting nat chain.
func (d *DNAT) DNATPackets(t testing.TB, family string) uint64 {
	t.Helper()
	name := map[string]string{"ip": "dnat_v4", "ip6": "dnat_v6"}[family]
	if name == "" {
		t.Fatalf("DNATPackets: family %q, want ip or ip6", family)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(d.Node.Handle)))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := c.GetNamedObjects(&nftables.Table{Name: DNATTable, Family: nftables.TableFamilyINet})
	if err != nil {
		t.Fatalf("read the counters of table inet %s: %v", DNATTable, err)
	}
	for _, o := range objs {
		if n, ok := o.(*nftables.NamedObj); ok && n.Name == name {
			if v, ok := n.Obj.(*expr.Counter); ok {
				return v.Packets
			}
		}
	}
	t.Fatalf("no counter %s in table inet %s", name, DNATTable)
	return 0
}
