package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrNotBPFFS is returned when the pin path is not on a bpf filesystem and
// none could be mounted there.
var ErrNotBPFFS = errors.New("pin path is not on a bpf filesystem")

// EnsureBPFFS makes sure pinPath lies on a bpf filesystem. When the default
// mount point /sys/fs/bpf holds no bpffs (a host that never mounted it, a
// container that did not get it from the host), it mounts one there, as
// systemd and most BPF agents do.
func EnsureBPFFS(pinPath string) error {
	dir := pinPath
	for {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			if st.Type == unix.BPF_FS_MAGIC {
				return nil
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("statfs %s: %w", dir, err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	const mnt = "/sys/fs/bpf"
	rel, err := filepath.Rel(mnt, pinPath)
	if err != nil || rel == ".." || filepath.IsAbs(rel) || len(rel) >= 2 && rel[:2] == ".." {
		return fmt.Errorf("%w: %s", ErrNotBPFFS, pinPath)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("%w: mount bpffs at %s: %w", ErrNotBPFFS, mnt, err)
	}
	return nil
}
