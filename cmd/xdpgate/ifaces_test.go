package main

import (
	"strings"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

func attached(t *testing.T, h *harness) map[string]string {
	t.Helper()
	out := map[string]string{}
	_ = h.tp.Host.Do(func() error {
		atts, err := loader.Attachments(h.pin)
		if err != nil {
			t.Error(err)
		}
		for _, a := range atts {
			out[a.Interface] = a.Mode
		}
		return nil
	})
	return out
}

// TestInterfaceHotplug configures an interface that does not exist yet:
// the agent attaches when it appears and forgets it when it goes.
func TestInterfaceHotplug(t *testing.T) {
	h := newHarness(t, "")
	cfg := strings.Replace(readFile(t, h.config), "interfaces: [veth0]", "interfaces: [veth0, late0]", 1)
	writeFile(t, h.config, cfg)
	h.start()
	if got := attached(t, h); got["veth0"] == "" || got["late0"] != "" {
		t.Fatalf("at start: %v", got)
	}
	h.tp.Host.Run(t, "ip", "link", "add", "late0", "type", "veth", "peer", "name", "late1")
	h.tp.Host.Run(t, "ip", "link", "set", "late0", "up")
	testutil.WaitFor(t, 10*time.Second, "late0 to be attached", func() bool { return attached(t, h)["late0"] != "" })
	h.tp.Host.Run(t, "ip", "link", "del", "late0")
	testutil.WaitFor(t, 10*time.Second, "late0 to be forgotten", func() bool { _, ok := attached(t, h)["late0"]; return !ok })
	if got := attached(t, h); got["veth0"] == "" {
		t.Errorf("veth0 lost: %v", got)
	}
}

// TestAutoInterfaces uses `interfaces: [auto]`: the agent attaches to the
// interface that holds the default route, and follows the route when it
// moves.
func TestAutoInterfaces(t *testing.T) {
	h := newHarness(t, "")
	writeFile(t, h.config, strings.Replace(readFile(t, h.config), "interfaces: [veth0]", "interfaces: [auto]", 1))
	h.tp.Host.Run(t, "ip", "route", "add", "default", "via", "10.99.0.2", "dev", "veth0")
	h.start()
	if got := attached(t, h); got["veth0"] == "" {
		t.Fatalf("default route on veth0, attached: %v", got)
	}
	h.tp.Host.Run(t, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	h.tp.Host.Run(t, "ip", "addr", "add", "10.98.0.1/24", "dev", "up0")
	h.tp.Host.Run(t, "ip", "link", "set", "up0", "up")
	h.tp.Host.Run(t, "ip", "link", "set", "up1", "up")
	h.tp.Host.Run(t, "ip", "route", "replace", "default", "via", "10.98.0.2", "dev", "up0")
	testutil.WaitFor(t, 10*time.Second, "the agent to follow the default route to up0", func() bool {
		got := attached(t, h)
		_, old := got["veth0"]
		return got["up0"] != "" && !old
	})
}
