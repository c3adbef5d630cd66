package loader

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MinKernel is the oldest kernel xdpgate supports: XDP through bpf_link
// (5.9), mmapable arrays (5.5), bpf_jiffies64 (5.5), bounded loops (5.3)
// and batch map operations (5.6) are all there from 5.10, the LTS release
// after them. The test matrix runs 6.1, 6.12 and current kernels.
var MinKernel = [2]int{5, 10}

// ErrKernelTooOld is returned by CheckKernel below MinKernel.
var ErrKernelTooOld = errors.New("kernel too old for xdpgate")

// CheckKernel refuses kernels older than MinKernel with a message that
// says why, rather than letting the verifier or a syscall fail obscurely.
func CheckKernel() error {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	major, minor, ok := parseRelease(release)
	if !ok {
		return nil // an unknown format: let the load itself decide
	}
	if major < MinKernel[0] || major == MinKernel[0] && minor < MinKernel[1] {
		return fmt.Errorf("%w: running %s, need %d.%d or later (XDP bpf_link, mmapable arrays, bpf_jiffies64, batch map operations)",
			ErrKernelTooOld, release, MinKernel[0], MinKernel[1])
	}
	return nil
}

func parseRelease(r string) (major, minor int, ok bool) {
	parts := strings.SplitN(r, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	end := strings.IndexFunc(parts[1], func(c rune) bool { return c < '0' || c > '9' })
	if end >= 0 {
		parts[1] = parts[1][:end]
	}
	minor, err2 := strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil
}
