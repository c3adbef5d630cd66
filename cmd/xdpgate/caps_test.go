package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// agentCaps is the capability set the DaemonSet grants (deploy/kubernetes):
// what the agent needs to load and pin BPF objects (bpf), attach XDP and
// program nftables (net_admin), and load programs whose verifier checks
// need perfmon (pointer arithmetic on map values), plus sys_resource for
// the memlock limit of kernels before 5.11.
var agentCaps = []string{"bpf", "net_admin", "perfmon", "sys_resource"}

// runCapped starts the agent with its capability bounding set cut down to
// caps, the way a container runtime does for a pod that drops ALL and adds
// caps: even as uid 0 it cannot gain anything else.
func (h *harness) runCapped(caps []string) (*exec.Cmd, *bytes.Buffer) {
	h.t.Helper()
	self, err := os.Executable()
	if err != nil {
		h.t.Fatal(err)
	}
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	cmd := h.tp.Host.Enter("setpriv", "--bounding-set", set, "--inh-caps", "-all", self, "run", "-c", h.config)
	cmd.Env = append(os.Environ(), "XDPGATE_AS_MAIN=1")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	return cmd, &log
}

// TestMinimalCapabilities runs the agent with exactly the capabilities the
// manifests grant and checks it enforces; then drops each of them in turn
// and shows which are really needed on this kernel.
func TestMinimalCapabilities(t *testing.T) {
	testutil.NeedCommand(t, "setpriv")
	h := newHarness(t, "mode: xdp\n")
	h.lapi.AddDecision(t, "--ip", "10.99.0.2", "--duration", "1h")

	cmd, log := h.runCapped(agentCaps)
	testutil.WaitFor(t, 20*time.Second, "the capped agent to enforce", func() bool {
		return strings.Contains(log.String(), "decisions applied")
	})
	if got := h.check("10.99.0.2"); got != maps.VerdictDrop {
		t.Fatalf("agent with %v: 10.99.0.2 is %s\n%s", agentCaps, got, log.String())
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	if strings.Contains(log.String(), "level=ERROR") {
		t.Errorf("errors with the granted capabilities:\n%s", log.String())
	}

	// Without each capability: does the agent still load, pin and attach?
	for _, drop := range agentCaps {
		var caps []string
		for _, c := range agentCaps {
			if c != drop {
				caps = append(caps, c)
			}
		}
		h.xdpgate("uninstall") // start from nothing, as on a fresh node
		cmd, log := h.runCapped(caps)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		var enforced bool
		deadline := time.After(10 * time.Second)
	wait:
		for {
			select {
			case <-done:
				break wait
			case <-deadline:
				break wait
			case <-time.After(100 * time.Millisecond):
				if strings.Contains(log.String(), "decisions applied") && !strings.Contains(log.String(), "level=ERROR") {
					enforced = true
					break wait
				}
			}
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-done
		first := ""
		for _, l := range strings.Split(log.String(), "\n") {
			if strings.Contains(l, "ERROR") || strings.Contains(l, "xdpgate run:") {
				first = l
				break
			}
		}
		if enforced {
			t.Logf("without %-12s the agent still works on this kernel (%s)", drop, unameRelease())
		} else {
			t.Logf("without %-12s the agent fails: %s", drop, first)
		}
		if (drop == "bpf" || drop == "net_admin") && enforced {
			t.Errorf("the agent worked without %s: the manifests grant more than needed", drop)
		}
	}
}

func unameRelease() string {
	var u syscall.Utsname
	_ = syscall.Uname(&u)
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// TestManifestGrantsTheTestedCapabilities ties the test above to the
// DaemonSet: it must grant exactly the set the test proves enough.
func TestManifestGrantsTheTestedCapabilities(t *testing.T) {
	b, err := os.ReadFile("../../deploy/kubernetes/xdpgate-daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, c := range agentCaps {
		want = append(want, strings.ToUpper(c))
	}
	line := "add: [" + strings.Join(want, ", ") + "]"
	if !strings.Contains(string(b), line) {
		t.Errorf("the DaemonSet does not grant exactly %v (looked for %q)", want, line)
	}
}
