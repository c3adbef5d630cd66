package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// Clock ties jiffies to CLOCK_BOOTTIME, so the program can estimate the
// latter from the former without a helper call (see boot_now in xdpgate.c).
type Clock struct {
	BaseJiffies uint64
	BaseNs      uint64 // CLOCK_BOOTTIME at BaseJiffies, one tick early
	NsPerJiffy  uint64
}

// jiffiesProg writes bpf_jiffies64() into the first 8 bytes of the packet.
// User space has no other way to read jiffies.
var jiffiesProg = asm.Instructions{
	asm.Mov.Reg(asm.R6, asm.R1),
	asm.FnJiffies64.Call(),
	asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // data
	asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
	asm.Mov.Reg(asm.R4, asm.R2),
	asm.Add.Imm(asm.R4, 8),
	asm.JGT.Reg(asm.R4, asm.R3, "out"),
	asm.StoreMem(asm.R2, 0, asm.R0, asm.DWord),
	asm.Mov.Imm(asm.R0, 2).WithSymbol("out"), // XDP_PASS
	asm.Return(),
}

// ErrClock is returned when jiffies cannot be tied to CLOCK_BOOTTIME.
var ErrClock = errors.New("calibrate jiffies against CLOCK_BOOTTIME")

// CalibrateClock samples jiffies and CLOCK_BOOTTIME together, twice, to
// find the tick length and the offset between the two clocks.
func CalibrateClock() (Clock, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "xdpgate_jiffies", Type: ebpf.XDP, License: "Dual BSD/GPL", Instructions: jiffiesProg})
	if err != nil {
		return Clock{}, fmt.Errorf("%w: load probe: %w", ErrClock, err)
	}
	defer p.Close()
	sample := func() (jiffies uint64, ns int64, err error) {
		buf := make([]byte, 64)
		out := make([]byte, 64)
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
			return 0, 0, err
		}
		if _, err := p.Run(&ebpf.RunOptions{Data: buf, DataOut: out}); err != nil {
			return 0, 0, err
		}
		return binary.NativeEndian.Uint64(out), ts.Nano(), nil
	}
	j1, t1, err := sample()
	if err != nil {
		return Clock{}, fmt.Errorf("%w: %w", ErrClock, err)
	}
	time.Sleep(60 * time.Millisecond)
	j2, t2, err := sample()
	if err != nil {
		return Clock{}, fmt.Errorf("%w: %w", ErrClock, err)
	}
	if j2 <= j1 {
		return Clock{}, fmt.Errorf("%w: jiffies did not advance", ErrClock)
	}
	hz := float64(j2-j1) / (float64(t2-t1) / 1e9)
	// CONFIG_HZ is one of a few values; pick the nearest.
	best := uint64(0)
	for _, c := range []uint64{100, 250, 300, 1000} {
		if best == 0 || abs(float64(c)-hz) < abs(float64(best)-hz) {
			best = c
		}
	}
	tick := uint64(time.Second) / best
	// t2 was read before jiffies: the tick j2 began at most one tick before
	// t2. Taking the base one tick earlier keeps the estimate behind.
	return Clock{BaseJiffies: j2, BaseNs: uint64(t2) - tick, NsPerJiffy: tick}, nil
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}
