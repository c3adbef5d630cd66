// Package livebench measures how cheaply xdpgate drops a flood on a live
// interface: its XDP program against the nftables fallback's input and
// forward hooks, on the same frames, the same 100k bans and the same
// receiving CPU.
//
// The traffic generator is a small XDP program run with BPF_PROG_RUN in
// live-frame mode (BPF_F_TEST_XDP_LIVE_FRAMES): the kernel runs it on a
// pool of frames as if they had been received on a veth in the sender's
// namespace, the program rewrites each frame's addresses from a table and
// returns XDP_TX, and the kernel transmits the frame out of that veth to
// its peer. No socket, no skb on the sending side: the sender is cheap
// enough to saturate the receiver from one CPU. docs/live-benchmark.md
// describes the set-up and the numbers.
package livebench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdpgate/xdpgate/internal/frame"
)

// FrameLen is the length of the generated frames: the 64-byte Ethernet
// minimum less the 4-byte FCS, which veth does not carry.
const FrameLen = 60

// Offsets in the frame: Ethernet, IPv4 without options, UDP.
const (
	offIPCsum = 14 + 10
	offIPSrc  = 14 + 12
	offIPDst  = 14 + 16
	offUDPDst = 14 + 20 + 2
	hdrEnd    = 14 + 20 + 8
)

// Slot is what one frame carries: source and destination address and
// destination port.
type Slot struct {
	Src, Dst netip.Addr
	DstPort  uint16
}

// slotValue is the map value: the frame's headers, Ethernet to UDP, ready
// to copy (checksum included, so that the program needs no arithmetic).
// The program rewrites every header byte of every frame because the
// receiver writes into them (TTL and checksum when forwarding, addresses
// when it NATs, the next hop's Ethernet header) and live-frame mode hands
// the same pages out again without resetting their content.
type slotValue [slotValueSize]byte

const slotValueSize = 48 // hdrEnd rounded up to 8 bytes

// Frame builds the template frame: Ethernet from src to dst MAC, IPv4
// (TTL 64, DF), UDP from port 40000 without checksum (allowed for IPv4),
// zero payload up to FrameLen. Addresses and destination port are the
// slot's, written by the program per frame.
func Frame(srcMAC, dstMAC net.HardwareAddr) []byte {
	f := make([]byte, FrameLen)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:14], unix.ETH_P_IP)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], FrameLen-14)
	binary.BigEndian.PutUint16(ip[6:8], 0x4000)
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:2], 40000)
	binary.BigEndian.PutUint16(udp[4:6], FrameLen-34)
	return f
}

// apply returns the template with the slot's addresses, port and
// checksum written in: what the program sends for that slot.
func apply(tmpl []byte, s Slot) []byte {
	f := append([]byte(nil), tmpl...)
	src, dst := s.Src.As4(), s.Dst.As4()
	copy(f[offIPSrc:], src[:])
	copy(f[offIPDst:], dst[:])
	binary.BigEndian.PutUint16(f[offUDPDst:], s.DstPort)
	f[offIPCsum], f[offIPCsum+1] = 0, 0
	binary.BigEndian.PutUint16(f[offIPCsum:], frame.Checksum(f[14:34]))
	return f
}

func (s Slot) value(tmpl []byte) slotValue {
	var v slotValue
	copy(v[:], apply(tmpl, s)[:hdrEnd])
	return v
}

// Generator is the flood's XDP program and its two maps: the slot table,
// which frame i takes its addresses from (slot i mod the table size), and
// a counter of the frames emitted.
type Generator struct {
	prog  *ebpf.Program
	slots *ebpf.Map
	count *ebpf.Map
	mask  uint32
	tmpl  []byte
	tid   atomic.Int64 // the sending thread, while Run runs
}

// ErrSlots is returned by NewGenerator for a slot table whose size is not
// a power of two.
var ErrSlots = errors.New("slot table size must be a power of two")

// NewGenerator loads the generator for frames built from tmpl (see Frame),
// with a slot table of n entries (a power of two; frame i uses slot
// i & (n-1)). Fill the table with SetSlots.
func NewGenerator(tmpl []byte, n int) (*Generator, error) {
	if n <= 0 || n&(n-1) != 0 || n > 1<<24 {
		return nil, fmt.Errorf("%w: %d", ErrSlots, n)
	}
	if len(tmpl) < hdrEnd {
		return nil, fmt.Errorf("template frame of %d bytes is shorter than its headers (%d)", len(tmpl), hdrEnd)
	}
	g := &Generator{mask: uint32(n - 1), tmpl: append([]byte(nil), tmpl...)}
	var err error
	g.slots, err = ebpf.NewMap(&ebpf.MapSpec{Name: "lb_slots", Type: ebpf.Array, KeySize: 4, ValueSize: slotValueSize, MaxEntries: uint32(n)})
	if err != nil {
		return nil, fmt.Errorf("create slot map: %w", err)
	}
	g.count, err = ebpf.NewMap(&ebpf.MapSpec{Name: "lb_count", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("create counter map: %w", err)
	}
	g.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "lb_flood",
		Type:         ebpf.XDP,
		License:      "Dual MIT/GPL",
		Instructions: program(g.count.FD(), g.slots.FD(), g.mask),
	})
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("load generator program: %w", err)
	}
	return g, nil
}

// program returns the generator's instructions:
//
//	n = count[0]++                 (one CPU runs it: no atomics needed)
//	s = slots[n & mask]
//	if data + 42 > data_end: drop
//	copy s's 42 bytes of headers over the frame's
//	return XDP_TX                  (transmitted out of the veth, to its peer)
func program(countFD, slotsFD int, mask uint32) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // r6 = ctx
		// r7 = count[0]++
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, countFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.DWord),
		asm.Mov.Reg(asm.R8, asm.R7),
		asm.Add.Imm(asm.R8, 1),
		asm.StoreMem(asm.R0, 0, asm.R8, asm.DWord),
		// r8 = &slots[r7 & mask]
		asm.And.Imm(asm.R7, int32(mask)),
		asm.StoreMem(asm.RFP, -8, asm.R7, asm.Word),
		asm.LoadMapPtr(asm.R1, slotsFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Reg(asm.R8, asm.R0),
		// r2 = data, r3 = data_end; the headers must fit.
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, hdrEnd),
		asm.JGT.Reg(asm.R4, asm.R3, "drop"),
	}
	// Copy the headers: five double words and a half word.
	for off := int16(0); off+8 <= hdrEnd; off += 8 {
		insns = append(insns,
			asm.LoadMem(asm.R5, asm.R8, off, asm.DWord),
			asm.StoreMem(asm.R2, off, asm.R5, asm.DWord))
	}
	insns = append(insns,
		asm.LoadMem(asm.R5, asm.R8, hdrEnd-2, asm.Half),
		asm.StoreMem(asm.R2, hdrEnd-2, asm.R5, asm.Half),
		asm.Mov.Imm(asm.R0, int32(xdpTX)),
		asm.Return(),
		asm.Mov.Imm(asm.R0, int32(xdpDrop)).WithSymbol("drop"),
		asm.Return(),
	)
	return insns
}

const (
	xdpDrop = 1
	xdpTX   = 3
)

// Size returns the number of slots.
func (g *Generator) Size() int { return int(g.mask) + 1 }

// SetSlots fills the slot table; slot i of the table is slots[i % len].
func (g *Generator) SetSlots(slots []Slot) error {
	if len(slots) == 0 {
		return errors.New("no slots")
	}
	n := g.Size()
	keys := make([]uint32, n)
	vals := make([]slotValue, n)
	for i := range keys {
		keys[i] = uint32(i)
		vals[i] = slots[i%len(slots)].value(g.tmpl)
	}
	if _, err := g.slots.BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("fill slot map: %w", err)
	}
	return nil
}

// Emitted returns how many frames the program has emitted since it was
// loaded (not how many the receiving veth took: its ring drops what it
// has no room for).
func (g *Generator) Emitted() (uint64, error) {
	var n uint64
	if err := g.count.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("read frame counter: %w", err)
	}
	return n, nil
}

// Run floods until ctx is done: it runs the program in live-frame mode on
// frames "received" on ifindex in the network namespace ns, on one OS
// thread pinned to cpu (-1: not pinned), and so transmits them out of that
// interface. For a veth, the peer takes the frames only while it has NAPI
// enabled (an XDP program attached, or GRO on: see EnableGRO).
func (g *Generator) Run(ctx context.Context, ns netns.NsHandle, ifindex, cpu int) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it dies with the goroutine, and
		// with it the namespace and the CPU affinity set here.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter sender namespace: %w", err)
			return
		}
		if cpu >= 0 {
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				errc <- fmt.Errorf("pin sender to CPU %d: %w", cpu, err)
				return
			}
		}
		g.tid.Store(int64(unix.Gettid()))
		defer g.tid.Store(0)
		ctxIn := xdpMD{DataEnd: uint32(len(g.tmpl)), IngressIfindex: uint32(ifindex)}
		for ctx.Err() == nil {
			_, err := g.prog.Run(&ebpf.RunOptions{
				Data:      g.tmpl,
				Context:   ctxIn,
				Repeat:    repeat,
				BatchSize: 64,
				Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
			})
			if err != nil {
				errc <- fmt.Errorf("run generator: %w", err)
				return
			}
		}
		errc <- nil
	}()
	return <-errc
}

// Thread returns the thread id of the running sender, 0 when none runs.
func (g *Generator) Thread() int { return int(g.tid.Load()) }

// repeat is how many frames one BPF_PROG_RUN call emits: enough to make
// the cost of each call's set-up (a page pool, torn down with an RCU
// grace period) negligible, few enough for Run to stop within a fraction
// of a second.
const repeat = 1 << 20

// xdpMD is struct xdp_md, the context the program runs with.
type xdpMD struct {
	Data, DataEnd, DataMeta                     uint32
	IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Close releases the program and maps.
func (g *Generator) Close() {
	if g.prog != nil {
		g.prog.Close()
	}
	if g.slots != nil {
		g.slots.Close()
	}
	if g.count != nil {
		g.count.Close()
	}
}
