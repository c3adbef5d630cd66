package testutil

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Topology is a "host" namespace whose veth0 is where xdpgate attaches, and
// a "client" namespace on the other end (veth1) holding several addresses.
// Host: 10.99.0.1/24, fd00:99::1/64. Client: 10.99.0.2-4, fd00:99::2-3.
type Topology struct {
	Host, Client *NetNS
}

// HostV4 and HostV6 are the host's addresses on veth0.
const (
	HostV4 = "10.99.0.1"
	HostV6 = "fd00:99::1"
)

// NewTopology creates the two namespaces and the veth pair between them.
// Static neighbour entries keep ARP and neighbour discovery out of the
// counters.
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	tp := &Topology{Host: NewNetNS(t), Client: NewNetNS(t)}
	Run(t, "ip", "link", "add", "veth0", "netns", tp.Host.Name, "type", "veth", "peer", "name", "veth1", "netns", tp.Client.Name)
	tp.Host.Run(t, "ip", "addr", "add", HostV4+"/24", "dev", "veth0")
	tp.Host.Run(t, "ip", "addr", "add", HostV6+"/64", "dev", "veth0", "nodad")
	tp.Host.Run(t, "ip", "link", "set", "veth0", "up")
	for _, a := range []string{"10.99.0.2/24", "10.99.0.3/24", "10.99.0.4/24"} {
		tp.Client.Run(t, "ip", "addr", "add", a, "dev", "veth1")
	}
	for _, a := range []string{"fd00:99::2/64", "fd00:99::3/64"} {
		tp.Client.Run(t, "ip", "addr", "add", a, "dev", "veth1", "nodad")
	}
	tp.Client.Run(t, "ip", "link", "set", "veth1", "up")
	mac := strings.TrimSpace(tp.Host.Run(t, "cat", "/sys/class/net/veth0/address"))
	tp.Client.Run(t, "ip", "neigh", "replace", HostV4, "lladdr", mac, "dev", "veth1", "nud", "permanent")
	tp.Client.Run(t, "ip", "neigh", "replace", HostV6, "lladdr", mac, "dev", "veth1", "nud", "permanent")
	return tp
}

// Receiver counts UDP datagrams per source address.
type Receiver struct {
	mu   sync.Mutex
	seen map[netip.Addr]int
}

// Port is where Listen receives.
const Port = 9999

// Listen receives UDP on the host's addresses, port Port.
func (tp *Topology) Listen(t testing.TB) *Receiver {
	t.Helper()
	r := &Receiver{seen: map[netip.Addr]int{}}
	for _, addr := range []netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr(HostV4), Port),
		netip.AddrPortFrom(netip.MustParseAddr(HostV6), Port),
	} {
		var conn *net.UDPConn
		if err := tp.Host.Do(func() error {
			var err error
			conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		// A burst of sends must not overflow the default receive buffer
		// (small on older kernels): a datagram lost there would look
		// like a drop. SO_RCVBUFFORCE as root ignores rmem_max.
		if rc, err := conn.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
			})
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				_, from, err := conn.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				r.mu.Lock()
				r.seen[from.Addr().Unmap()]++
				r.mu.Unlock()
			}
		}()
	}
	return r
}

// Count returns how many datagrams arrived from a.
func (r *Receiver) Count(a string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[netip.MustParseAddr(a)]
}

// Send sends n datagrams from src in the client namespace to the host.
func (tp *Topology) Send(t testing.TB, src string, n int) {
	t.Helper()
	if err := tp.TrySend(src, n, 0); err != nil {
		t.Fatalf("send from %s: %v", src, err)
	}
}

// TrySend sends n datagrams from src, gap apart.
func (tp *Topology) TrySend(src string, n int, gap time.Duration) error {
	s := netip.MustParseAddr(src)
	dst := netip.AddrPortFrom(netip.MustParseAddr(HostV4), Port)
	if s.Is6() {
		dst = netip.AddrPortFrom(netip.MustParseAddr(HostV6), Port)
	}
	return tp.Client.Do(func() error {
		c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(s, 0)), net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		for i := 0; i < n; i++ {
			if _, err := c.Write([]byte("xdpgate")); err != nil {
				return err
			}
			if gap > 0 {
				time.Sleep(gap)
			}
		}
		return nil
	})
}

// WaitFor polls cond until it holds or the timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
