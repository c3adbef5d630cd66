// Package loader loads the xdpgate XDP program, pins it with its maps and
// links under a bpffs directory, and attaches it to interfaces through
// bpf_link.
//
// Everything it creates outlives the process: when the agent exits, the
// pinned links keep the program attached and the pinned maps keep the bans,
// so enforcement continues. A new agent reuses the pinned maps, loads its own
// program and swaps it into every pinned link atomically (BPF_LINK_UPDATE),
// so an upgrade never leaves an interface without a program.
//
// Pin layout under the pin directory (default /sys/fs/bpf/xdpgate):
//
//	<map name>        every map, pinned by name (bpftool map dump pinned ...)
//	program           the XDP program
//	links/<ifname>    one bpf_link per attached interface
package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/bits"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"

	"github.com/xdpgate/xdpgate/bpf"
)

// DefaultPinPath is where the agent pins its objects unless told otherwise.
const DefaultPinPath = "/sys/fs/bpf/xdpgate"

const (
	progPin  = "program"
	linksDir = "links"
)

var (
	// ErrForeignProgram is returned by Attach when the interface already
	// runs an XDP program that is not xdpgate's and takeover was not asked.
	ErrForeignProgram = errors.New("interface already has a foreign XDP program")
	// ErrIncompatiblePins is returned when maps pinned by an earlier run do
	// not match the sizes asked for now.
	ErrIncompatiblePins = errors.New("pinned maps do not match the configured sizes")
	// ErrNotAttached is returned by Detach for an interface xdpgate does not
	// hold.
	ErrNotAttached = errors.New("interface is not attached")
)

// Sizes are the capacities of the ban, range and allowlist maps, fixed when
// the maps are created.
type Sizes struct {
	V4Exact  uint32 // exact IPv4 bans (/32)
	V6Exact  uint32 // exact IPv6 bans (/128)
	V4Ranges uint32 // IPv4 ranges (/8 to /31)
	V6Ranges uint32 // IPv6 ranges (shorter than /128)
	Allow    uint32 // allowlist entries per family
}

// DefaultSizes holds 1M exact IPv4 bans, 256k exact IPv6 bans and 64k ranges
// per family.
func DefaultSizes() Sizes {
	return Sizes{V4Exact: 1 << 20, V6Exact: 1 << 18, V4Ranges: 1 << 16, V6Ranges: 1 << 16, Allow: 4096}
}

// SummaryBits returns log2 of the bit count of a hashed summary for a map
// of n entries: at least 64 bits per entry, so that a full map still lets
// about 98% of misses skip the lookup.
func SummaryBits(n uint32) uint32 {
	b := uint32(bits.Len32(n-1)) + 6
	return min(max(b, 16), 31)
}

// ExactV4Bits returns log2 of the bucket count of the exact IPv4 ban cache
// for a map of n entries: a bucket per two entries, so that a full map
// leaves about 5% of buckets with more bans than their four slots, and the
// usual ban list (a tenth of it) practically none.
func ExactV4Bits(n uint32) uint32 {
	b := bits.Len32(max(n, 2)-1) - 1
	return uint32(min(max(b, 8), 30))
}

// Mode is how the program is attached to an interface.
type Mode string

const (
	ModeAuto    Mode = "auto"    // native, and generic where the driver has no XDP
	ModeNative  Mode = "native"  // in the driver (XDP_FLAGS_DRV_MODE)
	ModeGeneric Mode = "generic" // after the skb is built (XDP_FLAGS_SKB_MODE)
)

// Options say how to load the program.
type Options struct {
	// PinPath is the bpffs directory for pins; empty loads without
	// pinning (tests and benchmarks).
	PinPath string
	Sizes   Sizes
	// CountOnly counts what would be dropped but passes everything.
	CountOnly bool
	// ParseOnly builds the benchmark baseline: parse and pass, no lookups.
	ParseOnly bool
	// Clock ties jiffies to CLOCK_BOOTTIME for the expiry checks; Load
	// calibrates one when it is zero.
	Clock  Clock
	Logger *slog.Logger
}

// Dataplane is a loaded program and its maps.
type Dataplane struct {
	Program *ebpf.Program
	Maps    bpf.XdpgateMaps
	opts    Options
	log     *slog.Logger
	// links holds the links of a Dataplane without PinPath: nothing
	// else keeps them, so they last until Detach or Close.
	links map[string]link.Link
}

// Spec returns the collection spec with sizes and settings applied.
func Spec(opts Options) (*ebpf.CollectionSpec, error) {
	spec, err := bpf.LoadXdpgate()
	if err != nil {
		return nil, err
	}
	s := opts.Sizes
	if s == (Sizes{}) {
		s = DefaultSizes()
	}
	for name, n := range map[string]uint32{
		bpf.XdpgateMapBansV4:   s.V4Exact,
		bpf.XdpgateMapBansV6:   s.V6Exact,
		bpf.XdpgateMapRangesV4: s.V4Ranges,
		bpf.XdpgateMapRangesV6: s.V6Ranges,
		bpf.XdpgateMapAllowV4:  s.Allow,
		bpf.XdpgateMapAllowV6:  s.Allow,
	} {
		if n == 0 {
			return nil, fmt.Errorf("size of map %s must be positive", name)
		}
		spec.Maps[name].MaxEntries = n
	}
	vars := map[string]any{
		bpf.XdpgateVarCountOnly:          boolByte(opts.CountOnly),
		bpf.XdpgateVarParseOnly:          boolByte(opts.ParseOnly),
		bpf.XdpgateVarExactV4Bits:        ExactV4Bits(s.V4Exact),
		bpf.XdpgateVarSummaryV6Bits:      SummaryBits(s.V6Exact),
		bpf.XdpgateVarSummaryV6RangeBits: max(SummaryBits(s.V6Ranges), 24),
		bpf.XdpgateVarClockBaseJiffies:   opts.Clock.BaseJiffies,
		bpf.XdpgateVarClockBaseNs:        opts.Clock.BaseNs,
		bpf.XdpgateVarClockNsPerJiffy:    opts.Clock.NsPerJiffy,
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	spec.Maps[bpf.XdpgateMapExactV4].MaxEntries = 1 << ExactV4Bits(s.V4Exact)
	spec.Maps[bpf.XdpgateMapSummaryV6].MaxEntries = 1 << (SummaryBits(s.V6Exact) - 6)
	spec.Maps[bpf.XdpgateMapSummaryV6Range].MaxEntries = 1 << (max(SummaryBits(s.V6Ranges), 24) - 6)
	return spec, nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// Load loads the program. With a pin path it reuses the maps an earlier run
// pinned there (their contents are kept), pins what it creates, and moves
// every pinned link over to the new program atomically.
//
// A verifier rejection is returned as an *ebpf.VerifierError; print it with
// %+v for the whole log.
func Load(opts Options) (*Dataplane, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	if opts.Clock == (Clock{}) {
		c, err := CalibrateClock()
		if err != nil {
			return nil, err
		}
		opts.Clock = c
	}
	spec, err := Spec(opts)
	if err != nil {
		return nil, err
	}
	var copts ebpf.CollectionOptions
	if opts.PinPath != "" {
		if err := EnsureBPFFS(opts.PinPath); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Join(opts.PinPath, linksDir), 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
		for name, m := range spec.Maps {
			if !strings.HasPrefix(name, ".") {
				m.Pinning = ebpf.PinByName
			}
		}
		copts.Maps.PinPath = opts.PinPath
	}
	var objs bpf.XdpgateObjects
	if err := spec.LoadAndAssign(&objs, &copts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("%w under %s (%v): run `xdpgate uninstall` or restore the earlier sizes", ErrIncompatiblePins, opts.PinPath, err)
		}
		return nil, fmt.Errorf("load xdp program: %w", err)
	}
	d := &Dataplane{Program: objs.Xdpgate, Maps: objs.XdpgateMaps, opts: opts, log: log}
	if opts.PinPath == "" {
		return d, nil
	}
	if err := d.pinProgram(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.upgradeLinks(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// pinProgram pins the program, replacing an earlier run's pin in one rename.
func (d *Dataplane) pinProgram() error {
	final := filepath.Join(d.opts.PinPath, progPin)
	tmp := final + "_new" // bpffs refuses dots in names
	_ = os.Remove(tmp)
	if err := d.Program.Pin(tmp); err != nil {
		return fmt.Errorf("pin program: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("pin program: replace %s: %w", final, err)
	}
	return nil
}

// upgradeLinks swaps the new program into every link an earlier run pinned.
func (d *Dataplane) upgradeLinks() error {
	names, err := d.linkNames()
	if err != nil {
		return err
	}
	for _, name := range names {
		l, err := link.LoadPinnedLink(d.linkPin(name), nil)
		if err != nil {
			return fmt.Errorf("open pinned link of %s: %w", name, err)
		}
		err = l.Update(d.Program)
		l.Close()
		if err != nil {
			return fmt.Errorf("replace program on %s: %w", name, err)
		}
		d.log.Debug("program replaced on pinned link", "interface", name)
	}
	return nil
}

func (d *Dataplane) linkPin(ifname string) string {
	return filepath.Join(d.opts.PinPath, linksDir, ifname)
}

func (d *Dataplane) linkNames() ([]string, error) {
	if d.opts.PinPath == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(filepath.Join(d.opts.PinPath, linksDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pinned links: %w", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// Attachment describes the program on one interface.
type Attachment struct {
	Interface string `json:"interface"`
	Index     int    `json:"ifindex"`
	// Mode is "native" or "generic", as the kernel reports it.
	Mode string `json:"mode"`
	// ProgramID is the id of the program the link runs.
	ProgramID uint32 `json:"program_id"`
}

// Attach attaches the program to an interface through a pinned bpf_link
// (without PinPath, through a link that lasts until Detach or Close).
// Attaching an interface that xdpgate already holds just makes sure it runs
// this program. With ModeAuto native mode is tried first; falling back to
// generic mode is logged and reported in the returned Attachment.
//
// An interface that runs another program is refused with ErrForeignProgram
// unless takeover is set; with takeover a program attached through netlink
// is replaced (one held by another bpf_link cannot be, and is reported).
func (d *Dataplane) Attach(ifname string, mode Mode, takeover bool) (Attachment, error) {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach %s: %w", ifname, err)
	}
	if d.opts.PinPath != "" {
		if l, err := link.LoadPinnedLink(d.linkPin(ifname), nil); err == nil {
			info, ierr := l.Info()
			if ierr == nil && info.XDP() != nil && int(info.XDP().Ifindex) == iface.Index {
				err := l.Update(d.Program)
				l.Close()
				if err != nil {
					return Attachment{}, fmt.Errorf("attach %s: replace program: %w", ifname, err)
				}
				return d.describe(ifname, iface.Index)
			}
			// A stale pin: the interface went away and the name now
			// belongs to another one. Drop the old link.
			_ = l.Unpin()
			l.Close()
		}
	}
	if l := d.links[ifname]; l != nil {
		if info, err := l.Info(); err == nil && info.XDP() != nil && int(info.XDP().Ifindex) == iface.Index {
			return d.describe(ifname, iface.Index)
		}
		l.Close()
		delete(d.links, ifname)
	}
	if err := d.checkForeign(iface, takeover); err != nil {
		return Attachment{}, err
	}

	var l link.Link
	switch mode {
	case ModeNative, ModeAuto, "":
		l, err = link.AttachXDP(link.XDPOptions{Program: d.Program, Interface: iface.Index, Flags: link.XDPDriverMode})
		if err != nil && mode == ModeNative {
			return Attachment{}, fmt.Errorf("attach %s in native mode: %w", ifname, err)
		}
		if err != nil {
			d.log.Warn("native XDP unavailable, falling back to generic mode", "interface", ifname, "error", err)
			l, err = link.AttachXDP(link.XDPOptions{Program: d.Program, Interface: iface.Index, Flags: link.XDPGenericMode})
		}
	case ModeGeneric:
		l, err = link.AttachXDP(link.XDPOptions{Program: d.Program, Interface: iface.Index, Flags: link.XDPGenericMode})
	default:
		return Attachment{}, fmt.Errorf("attach %s: unknown mode %q", ifname, mode)
	}
	if err != nil {
		return Attachment{}, fmt.Errorf("attach %s: %w", ifname, err)
	}
	if d.opts.PinPath == "" {
		// Unpinned (tests, benchmarks): the link lives with d.
		if d.links == nil {
			d.links = map[string]link.Link{}
		}
		if old := d.links[ifname]; old != nil {
			old.Close()
		}
		d.links[ifname] = l
		return d.describe(ifname, iface.Index)
	}
	defer l.Close()
	if err := l.Pin(d.linkPin(ifname)); err != nil {
		return Attachment{}, fmt.Errorf("pin link of %s: %w", ifname, err)
	}
	return d.describe(ifname, iface.Index)
}

// checkForeign refuses an interface that runs somebody else's program.
func (d *Dataplane) checkForeign(iface *net.Interface, takeover bool) error {
	nl, err := netlink.LinkByIndex(iface.Index)
	if err != nil {
		return fmt.Errorf("attach %s: %w", iface.Name, err)
	}
	xdp := nl.Attrs().Xdp
	if xdp == nil || !xdp.Attached || xdp.ProgId == 0 {
		return nil
	}
	if !takeover {
		return fmt.Errorf("attach %s: program id %d: %w (set takeover to replace it)", iface.Name, xdp.ProgId, ErrForeignProgram)
	}
	d.log.Warn("taking over interface from a foreign XDP program", "interface", iface.Name, "program_id", xdp.ProgId)
	// A program attached through netlink (ip link set xdp ...) can be
	// removed by setting no fd; one held by a bpf_link refuses this.
	// The detach must name the mode the program was attached in.
	flags := 0
	switch xdp.AttachMode {
	case 1: // XDP_ATTACHED_DRV
		flags = 1 << 2 // XDP_FLAGS_DRV_MODE
	case 2: // XDP_ATTACHED_SKB
		flags = 1 << 1 // XDP_FLAGS_SKB_MODE
	}
	if err := netlink.LinkSetXdpFdWithFlags(nl, -1, flags); err != nil {
		return fmt.Errorf("attach %s: remove foreign program %d: %w", iface.Name, xdp.ProgId, err)
	}
	return nil
}

func (d *Dataplane) describe(ifname string, index int) (Attachment, error) {
	return describe(ifname, index)
}

func describe(ifname string, index int) (Attachment, error) {
	a := Attachment{Interface: ifname, Index: index}
	nl, err := netlink.LinkByIndex(index)
	if err != nil {
		return a, fmt.Errorf("describe %s: %w", ifname, err)
	}
	if xdp := nl.Attrs().Xdp; xdp != nil && xdp.Attached {
		a.ProgramID = xdp.ProgId
		switch xdp.AttachMode {
		case 1: // XDP_ATTACHED_DRV
			a.Mode = string(ModeNative)
		case 2: // XDP_ATTACHED_SKB
			a.Mode = string(ModeGeneric)
		case 3:
			a.Mode = "offload"
		default:
			a.Mode = "multi"
		}
	}
	return a, nil
}

// Detach removes the program from one interface.
func (d *Dataplane) Detach(ifname string) error {
	if l := d.links[ifname]; l != nil {
		delete(d.links, ifname)
		if err := l.Close(); err != nil {
			return fmt.Errorf("detach %s: %w", ifname, err)
		}
		return nil
	}
	if d.opts.PinPath == "" {
		return fmt.Errorf("detach %s: %w", ifname, ErrNotAttached)
	}
	return detach(d.opts.PinPath, ifname)
}

func detach(pinPath, ifname string) error {
	p := filepath.Join(pinPath, linksDir, ifname)
	l, err := link.LoadPinnedLink(p, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("detach %s: %w", ifname, ErrNotAttached)
	}
	if err != nil {
		return fmt.Errorf("detach %s: %w", ifname, err)
	}
	defer l.Close()
	// Detach first: an unpinned link whose interface is gone is simply
	// released; one still attached must not linger after we unpin it.
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("detach %s: %w", ifname, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("detach %s: unpin: %w", ifname, err)
	}
	return nil
}

// Attachments lists the interfaces the pinned links hold.
func (d *Dataplane) Attachments() ([]Attachment, error) {
	return Attachments(d.opts.PinPath)
}

// Attachments lists the interfaces held by the links pinned under pinPath,
// without loading anything: the CLI uses it with the agent stopped.
func Attachments(pinPath string) ([]Attachment, error) {
	d := &Dataplane{opts: Options{PinPath: pinPath}}
	names, err := d.linkNames()
	if err != nil {
		return nil, err
	}
	var out []Attachment
	for _, name := range names {
		l, err := link.LoadPinnedLink(d.linkPin(name), nil)
		if err != nil {
			return nil, fmt.Errorf("open pinned link of %s: %w", name, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return nil, fmt.Errorf("link info of %s: %w", name, err)
		}
		a := Attachment{Interface: name, ProgramID: uint32(info.Program)}
		if x := info.XDP(); x != nil {
			a.Index = int(x.Ifindex)
		}
		if a.Index != 0 {
			if got, err := describe(name, a.Index); err == nil {
				a.Mode = got.Mode
			}
		} else {
			a.Mode = "detached" // the interface went away
		}
		out = append(out, a)
	}
	return out, nil
}

// Close releases this process's handles. Pinned objects stay: attached
// interfaces keep dropping after the process exits.
func (d *Dataplane) Close() {
	for name, l := range d.links {
		l.Close()
		delete(d.links, name)
	}
	if d.Program != nil {
		d.Program.Close()
	}
	d.Maps.Close()
}

// Uninstall detaches every pinned link and removes the program and map pins
// under pinPath, then the directory itself. It is what `xdpgate uninstall`
// does; a missing directory is not an error.
func Uninstall(pinPath string) error {
	d := &Dataplane{opts: Options{PinPath: pinPath}}
	names, err := d.linkNames()
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		if err := detach(pinPath, name); err != nil {
			errs = append(errs, err)
		}
	}
	ents, err := os.ReadDir(pinPath)
	if errors.Is(err, fs.ErrNotExist) {
		return errors.Join(errs...)
	}
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("read pin directory: %w", err))...)
	}
	for _, e := range ents {
		if e.Name() == linksDir {
			continue
		}
		if err := os.Remove(filepath.Join(pinPath, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("remove pin: %w", err))
		}
	}
	_ = os.Remove(filepath.Join(pinPath, linksDir))
	if err := os.Remove(pinPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
	}
	return errors.Join(errs...)
}

// OpenPinnedMaps opens the maps pinned under pinPath without loading a
// program: what the CLI reads from with the agent stopped.
func OpenPinnedMaps(pinPath string) (*bpf.XdpgateMaps, error) {
	spec, err := bpf.LoadXdpgate()
	if err != nil {
		return nil, err
	}
	coll := &ebpf.Collection{Maps: map[string]*ebpf.Map{}}
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // .rodata and friends belong to the program
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, name), nil)
		if err != nil {
			coll.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		coll.Maps[name] = m
	}
	var m bpf.XdpgateMaps
	if err := coll.Assign(&m); err != nil {
		coll.Close()
		return nil, err
	}
	return &m, nil
}
