package loader_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

var sizes = loader.Sizes{V4Exact: 1 << 12, V6Exact: 1 << 12, V4Ranges: 1 << 10, V6Ranges: 1 << 10, Allow: 64}

// pinDir returns a fresh pin directory on bpffs, uninstalled at the end.
func pinDir(t *testing.T) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	dir := filepath.Join("/sys/fs/bpf", "xdpgate-test-"+hex.EncodeToString(b[:]))
	if err := loader.EnsureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := loader.Uninstall(dir); err != nil {
			t.Errorf("uninstall: %v", err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin directory left behind: %v", err)
		}
	})
	return dir
}

func load(tp *testutil.Topology, t *testing.T, pin string, mode loader.Mode) (*loader.Dataplane, *maps.Maps, loader.Attachment) {
	t.Helper()
	var dp *loader.Dataplane
	var att loader.Attachment
	err := tp.Host.Do(func() error {
		var err error
		dp, err = loader.Load(loader.Options{PinPath: pin, Sizes: sizes})
		if err != nil {
			return err
		}
		att, err = dp.Attach("veth0", mode, false)
		return err
	})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	m, err := maps.New(&dp.Maps)
	if err != nil {
		t.Fatal(err)
	}
	return dp, m, att
}

func entry(p string) decision.Entry {
	return decision.Entry{Prefix: netip.MustParsePrefix(p), Origin: "cscli", Expiry: time.Now().Add(time.Hour)}
}

// TestLive attaches the program in native mode to a veth and sends real
// packets through it: banned sources are dropped, the others arrive, and
// the counters agree with what was sent and received.
func TestLive(t *testing.T) {
	tp := testutil.NewTopology(t)
	dp, m, att := load(tp, t, pinDir(t), loader.ModeNative)
	defer dp.Close()
	if att.Mode != "native" {
		t.Fatalf("attached in %q mode, want native", att.Mode)
	}
	ctx := context.Background()
	if err := m.Apply(ctx, []decision.Entry{entry("10.99.0.2/32"), entry("fd00:99::2/128"), entry("10.99.0.4/31")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.SetAllowlist(ctx, []netip.Prefix{netip.MustParsePrefix("10.99.0.5/32")}); err != nil {
		t.Fatal(err)
	}
	r := tp.Listen(t)
	const n = 50
	for _, src := range []string{"10.99.0.2", "10.99.0.3", "10.99.0.4", "fd00:99::2", "fd00:99::3"} {
		tp.Send(t, src, n)
	}
	testutil.WaitFor(t, 5*time.Second, "allowed traffic", func() bool { return r.Count("10.99.0.3") == n && r.Count("fd00:99::3") == n })
	time.Sleep(100 * time.Millisecond)
	for _, src := range []string{"10.99.0.2", "10.99.0.4", "fd00:99::2"} {
		if got := r.Count(src); got != 0 {
			t.Errorf("%d datagrams from banned %s arrived", got, src)
		}
	}
	st, err := m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.DropV4.Packets != 2*n || st.DropV6.Packets != n {
		t.Errorf("drop counters v4=%d v6=%d, want %d and %d", st.DropV4.Packets, st.DropV6.Packets, 2*n, n)
	}
	if got := st.DropsByOrigin["cscli"]["ipv4"].Packets; got != 2*n {
		t.Errorf("cscli ipv4 drops = %d, want %d", got, 2*n)
	}
	if st.PassV4.Packets < n || st.PassV6.Packets < n {
		t.Errorf("pass counters v4=%d v6=%d, want at least %d each", st.PassV4.Packets, st.PassV6.Packets, n)
	}
}

// TestSurvivesRestart closes every Go handle and checks that the pinned
// program keeps dropping; then reopens the pins, changes the bans, and
// loads a new program over the old one: the maps keep their contents and
// the link switches program without a gap.
func TestSurvivesRestart(t *testing.T) {
	tp := testutil.NewTopology(t)
	pin := pinDir(t)
	dp, m, att := load(tp, t, pin, loader.ModeNative)
	if err := m.Apply(context.Background(), []decision.Entry{entry("10.99.0.2/32")}, nil); err != nil {
		t.Fatal(err)
	}
	dp.Close() // the process "exits": nothing of it is left but the pins

	r := tp.Listen(t)
	tp.Send(t, "10.99.0.2", 20)
	tp.Send(t, "10.99.0.3", 20)
	testutil.WaitFor(t, 5*time.Second, "allowed traffic", func() bool { return r.Count("10.99.0.3") == 20 })
	if got := r.Count("10.99.0.2"); got != 0 {
		t.Fatalf("after the loader closed, %d datagrams from the banned source arrived", got)
	}

	// Reopen the pins the way the CLI does and change the ban set.
	pm, err := loader.OpenPinnedMaps(pin)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := maps.New(pm)
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Apply(context.Background(), []decision.Entry{entry("10.99.0.3/32")}, []netip.Prefix{netip.MustParsePrefix("10.99.0.2/32")}); err != nil {
		t.Fatal(err)
	}
	pm.Close()
	tp.Send(t, "10.99.0.2", 20)
	tp.Send(t, "10.99.0.3", 20)
	testutil.WaitFor(t, 5*time.Second, "the unbanned source", func() bool { return r.Count("10.99.0.2") == 20 })
	if got := r.Count("10.99.0.3"); got != 20 {
		t.Fatalf("newly banned source: %d datagrams arrived, want the 20 from before the ban", got)
	}

	// Upgrade: a new program replaces the old one in the pinned link.
	dp2, m3, att2 := load(tp, t, pin, loader.ModeNative)
	defer dp2.Close()
	if att2.ProgramID == att.ProgramID {
		t.Errorf("program id unchanged after reload (%d)", att.ProgramID)
	}
	list, err := m3.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Prefix != netip.MustParsePrefix("10.99.0.3/32") {
		t.Errorf("bans after reload: %v", list)
	}
	atts, err := loader.Attachments(pin)
	if err != nil {
		t.Fatal(err)
	}
	if len(atts) != 1 || atts[0].ProgramID != att2.ProgramID || atts[0].Interface != "veth0" {
		t.Errorf("attachments after reload: %+v (want program %d)", atts, att2.ProgramID)
	}
}

// TestForeignProgram refuses an interface that runs somebody else's XDP
// program, unless told to take over.
func TestForeignProgram(t *testing.T) {
	tp := testutil.NewTopology(t)
	foreign, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	err = tp.Host.Do(func() error {
		l, err := netlink.LinkByName("veth0")
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, foreign.FD(), 2 /* XDP_FLAGS_SKB_MODE */)
	})
	if err != nil {
		t.Fatal(err)
	}
	pin := pinDir(t)
	err = tp.Host.Do(func() error {
		dp, err := loader.Load(loader.Options{PinPath: pin, Sizes: sizes})
		if err != nil {
			return err
		}
		defer dp.Close()
		if _, err := dp.Attach("veth0", loader.ModeAuto, false); !errors.Is(err, loader.ErrForeignProgram) {
			return fmt.Errorf("attach over a foreign program: err = %v, want ErrForeignProgram", err)
		}
		att, err := dp.Attach("veth0", loader.ModeAuto, true)
		if err != nil {
			return fmt.Errorf("takeover: %w", err)
		}
		info, err := dp.Program.Info()
		if err != nil {
			return err
		}
		id, _ := info.ID()
		if att.ProgramID != uint32(id) {
			return fmt.Errorf("after takeover the interface runs program %d, want %d", att.ProgramID, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestGenericFallback attaches to a device without native XDP: auto mode
// falls back to generic and says so; native mode refuses.
func TestGenericFallback(t *testing.T) {
	ns := testutil.NewNetNS(t)
	// A bridge has no native XDP (no ndo_bpf), and is built into every
	// kernel that can run Kubernetes.
	ns.Run(t, "ip", "link", "add", "dummy0", "type", "bridge")
	ns.Run(t, "ip", "link", "set", "dummy0", "up")
	pin := pinDir(t)
	err := ns.Do(func() error {
		dp, err := loader.Load(loader.Options{PinPath: pin, Sizes: sizes})
		if err != nil {
			return err
		}
		defer dp.Close()
		if _, err := dp.Attach("dummy0", loader.ModeNative, false); err == nil {
			return errors.New("native attach to a dummy device succeeded")
		}
		att, err := dp.Attach("dummy0", loader.ModeAuto, false)
		if err != nil {
			return err
		}
		if att.Mode != "generic" {
			return fmt.Errorf("auto mode on dummy0 attached as %q, want generic", att.Mode)
		}
		if err := dp.Detach("dummy0"); err != nil {
			return err
		}
		if err := dp.Detach("dummy0"); !errors.Is(err, loader.ErrNotAttached) {
			return fmt.Errorf("second detach: %v, want ErrNotAttached", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestUnpinned attaches without a pin directory: the attachment lasts
// while the Dataplane is open, and goes with Detach or Close.
func TestUnpinned(t *testing.T) {
	ns := testutil.NewNetNS(t)
	ns.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	ns.Run(t, "ip", "link", "set", "br0", "up")
	progID := func() uint32 {
		l, err := netlink.LinkByName("br0")
		if err != nil || l.Attrs().Xdp == nil || !l.Attrs().Xdp.Attached {
			return 0
		}
		return l.Attrs().Xdp.ProgId
	}
	err := ns.Do(func() error {
		dp, err := loader.Load(loader.Options{Sizes: sizes})
		if err != nil {
			return err
		}
		att, err := dp.Attach("br0", loader.ModeGeneric, false)
		if err != nil {
			return err
		}
		if id := progID(); id == 0 || id != att.ProgramID {
			return fmt.Errorf("after Attach, br0 runs program %d, want %d", id, att.ProgramID)
		}
		// Attaching again is not a foreign program: it is ours.
		if _, err := dp.Attach("br0", loader.ModeGeneric, false); err != nil {
			return fmt.Errorf("second attach: %w", err)
		}
		if err := dp.Detach("br0"); err != nil {
			return err
		}
		if id := progID(); id != 0 {
			return fmt.Errorf("after Detach, br0 still runs program %d", id)
		}
		if err := dp.Detach("br0"); !errors.Is(err, loader.ErrNotAttached) {
			return fmt.Errorf("second detach: %v, want ErrNotAttached", err)
		}
		if _, err := dp.Attach("br0", loader.ModeGeneric, false); err != nil {
			return err
		}
		dp.Close()
		if id := progID(); id != 0 {
			return fmt.Errorf("after Close, br0 still runs program %d", id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestIncompatiblePins refuses to reuse maps pinned with other sizes.
func TestIncompatiblePins(t *testing.T) {
	testutil.Privileged(t)
	pin := pinDir(t)
	dp, err := loader.Load(loader.Options{PinPath: pin, Sizes: sizes})
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
	other := sizes
	other.V4Exact *= 2
	if _, err := loader.Load(loader.Options{PinPath: pin, Sizes: other}); !errors.Is(err, loader.ErrIncompatiblePins) {
		t.Fatalf("err = %v, want ErrIncompatiblePins", err)
	}
}

func TestSummaryBits(t *testing.T) {
	for _, tc := range []struct{ n, want uint32 }{{1, 16}, {1 << 10, 16}, {1 << 20, 26}, {1<<20 + 1, 27}, {1 << 18, 24}} {
		if got := loader.SummaryBits(tc.n); got != tc.want {
			t.Errorf("SummaryBits(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}
