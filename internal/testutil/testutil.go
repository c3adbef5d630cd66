// Package testutil holds helpers shared by the tests that need real parts:
// root, the kernel's BPF and XDP support, network namespaces and nftables.
//
// A test that lacks what it needs skips when run by hand, but fails under
// CI=true: a skipped kernel test proves nothing.
package testutil

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// InCI reports whether the tests run in CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips the test, or fails it under CI=true.
func SkipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		tb.Fatalf("CI=true and this test cannot run: %s", msg)
	}
	tb.Skip(msg)
}

// Privileged stops the test unless it runs as root.
func Privileged(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(tb, "needs root (BPF, XDP, netns, nftables)")
	}
}

// NeedCommand stops the test unless name is on PATH.
func NeedCommand(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(tb, "needs %s on PATH (make deps installs it)", name)
	}
	return p
}

// NetNS is a named network namespace that lives for one test.
type NetNS struct {
	Name   string
	Handle netns.NsHandle
}

// NewNetNS creates a fresh named network namespace (as `ip netns add`
// would), brings its loopback up and removes it when the test ends.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	Privileged(tb)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "xdpg-" + hex.EncodeToString(b[:])
	Run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		tb.Fatalf("open netns %s: %v", name, err)
	}
	tb.Cleanup(func() { _ = h.Close() })
	ns := &NetNS{Name: name, Handle: h}
	ns.Run(tb, "ip", "link", "set", "lo", "up")
	return ns
}

// Do runs fn on a locked OS thread switched into the namespace.
// Goroutines started by fn do not inherit the namespace.
func (ns *NetNS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it dies with the goroutine, so a
		// thread left in the wrong namespace never runs other code.
		runtime.LockOSThread()
		if err := netns.Set(ns.Handle); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Run runs a command inside the namespace and fails the test on error.
func (ns *NetNS) Run(tb testing.TB, args ...string) string {
	tb.Helper()
	return Run(tb, append([]string{"ip", "netns", "exec", ns.Name}, args...)...)
}

// Command returns an exec.Cmd that runs inside the namespace.
func (ns *NetNS) Command(args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
}

// Enter returns an exec.Cmd that runs inside the namespace's network
// namespace only. Unlike `ip netns exec` it keeps the caller's mounts, so a
// process started this way pins to the same /sys/fs/bpf as the test.
func (ns *NetNS) Enter(args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns.Name, "--"}, args...)...)
}

// Run runs a command and fails the test with its output on error.
func Run(tb testing.TB, args ...string) string {
	tb.Helper()
	var out bytes.Buffer
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		tb.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// HTTPClientIn returns an HTTP client whose connections are dialled from
// inside the named network namespace (the transport dials from goroutines
// of its own, which a locked thread would not cover).
func HTTPClientIn(name string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			// The thread is left in the namespace and dies with this
			// goroutine; the socket keeps the namespace it was made in.
			runtime.LockOSThread()
			h, err := netns.GetFromName(name)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				ch <- result{nil, err}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// ReadmeBlock returns the fenced code block of the repository's README.md
// whose first line is first: the examples the README shows, for tests
// that check they work.
func ReadmeBlock(tb testing.TB, first string) string {
	tb.Helper()
	_, file, _, _ := runtime.Caller(0)
	readme, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "README.md"))
	if err != nil {
		tb.Fatal(err)
	}
	for _, part := range strings.Split(string(readme), "```")[1:] {
		// part is "lang\nbody" inside a fence, or text between two.
		_, body, ok := strings.Cut(part, "\n")
		if ok && strings.HasPrefix(body, first+"\n") {
			return body
		}
	}
	tb.Fatalf("README.md has no code block starting with %q", first)
	return ""
}
