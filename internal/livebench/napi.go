package livebench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// How a veth receives, and where the receiving CPU time goes:
//
// Without XDP and without GRO, a veth hands each skb to netif_rx on the
// sending CPU: the receive path runs in that CPU's softirq, mixed with the
// sender. With an XDP program attached or GRO on, the veth has a NAPI
// instance of its own: the sender only queues frames into a 256-entry ring
// and schedules it. In threaded mode (/sys/class/net/DEV/threaded) the
// NAPI poll runs in a kernel thread, "napi/DEV-ID", which can be pinned to
// a CPU of its own and whose CPU time the kernel counts exactly
// (/proc/PID/schedstat): everything the receiver does for a frame, from
// the XDP program or the skb it builds to the netfilter verdict, runs
// there.

// EnableGRO turns GRO on for a device of the calling thread's network
// namespace (ethtool -K DEV gro on). On a veth, GRO gives the device a
// NAPI instance, as a NIC has, without an XDP program.
func EnableGRO(dev string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	val := struct{ cmd, data uint32 }{unix.ETHTOOL_SGRO, 1}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:], dev)
	ifr.data = unsafe.Pointer(&val)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("enable GRO on %s: %w", dev, errno)
	}
	return nil
}

// NAPIThreads returns the process ids of the NAPI threads of dev, found by
// their name, "napi/DEV-ID" (cut to 15 characters). Use a device name of
// at most 8 characters, unique on the machine: names are per namespace,
// threads are not.
func NAPIThreads(dev string) ([]int, error) {
	prefix := "napi/" + dev + "-"
	if len(prefix) > 15 {
		return nil, fmt.Errorf("device name %q too long to find its NAPI threads by name", dev)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.HasPrefix(string(b), prefix) {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("no NAPI thread for %s (is NAPI threaded, and XDP or GRO on?)", dev)
	}
	return pids, nil
}

// Pin restricts the threads to one CPU.
func Pin(pids []int, cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	var errs []error
	for _, pid := range pids {
		if err := unix.SchedSetaffinity(pid, &set); err != nil {
			errs = append(errs, fmt.Errorf("pin thread %d to CPU %d: %w", pid, cpu, err))
		}
	}
	return errors.Join(errs...)
}

// ThreadCPU returns the CPU time the threads have run, summed: the
// scheduler's sum_exec_runtime, in nanoseconds (/proc/PID/schedstat).
func ThreadCPU(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			return 0, fmt.Errorf("cpu time of thread %d: %w", pid, err)
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, fmt.Errorf("cpu time of thread %d: empty schedstat", pid)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu time of thread %d: %w", pid, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// CPUTimes is one CPU's line of /proc/stat, in clock ticks.
type CPUTimes struct {
	User, Nice, System, Idle, IOWait, IRQ, SoftIRQ, Steal uint64
}

// Busy returns the ticks not idle.
func (c CPUTimes) Busy() uint64 { return c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ + c.Steal }

// Total returns every tick.
func (c CPUTimes) Total() uint64 { return c.Busy() + c.Idle + c.IOWait }

// ReadCPU reads the times of one CPU from /proc/stat.
func ReadCPU(cpu int) (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, err
	}
	name := "cpu" + strconv.Itoa(cpu)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != name {
			continue
		}
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
				return CPUTimes{}, fmt.Errorf("/proc/stat %s: %w", name, err)
			}
		}
		return CPUTimes{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]}, nil
	}
	return CPUTimes{}, fmt.Errorf("/proc/stat: no %s", name)
}

// SetFIFO gives the threads the real-time policy SCHED_FIFO at priority 1:
// they run as soon as they are woken, before any ordinary task, as the
// softirq of a NIC's interrupt would. The kernel's real-time throttling
// still leaves ordinary tasks 5% of the CPU.
func SetFIFO(pids []int) error {
	var errs []error
	for _, pid := range pids {
		attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 1}
		if err := unix.SchedSetAttr(pid, &attr, 0); err != nil {
			errs = append(errs, fmt.Errorf("SCHED_FIFO for thread %d: %w", pid, err))
		}
	}
	return errors.Join(errs...)
}
