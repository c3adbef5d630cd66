package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdpgate/xdpgate/internal/config"
	"github.com/xdpgate/xdpgate/internal/loader"
)

// wantedInterfaces returns the interfaces to enforce on: the configured
// names, or with "auto" those that hold a default route (v4 or v6).
func (a *Agent) wantedInterfaces() ([]string, error) {
	if !a.cfg.AutoInterfaces() {
		return a.cfg.Interfaces, nil
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []string
	add := func(idx int) {
		if l, err := netlink.LinkByIndex(idx); err == nil && !slices.Contains(out, l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.LinkIndex > 0 {
			add(r.LinkIndex)
		}
		for _, nh := range r.MultiPath {
			add(nh.LinkIndex)
		}
	}
	slices.Sort(out)
	return out, nil
}

// syncInterfaces attaches to every wanted interface that is present and
// not yet held, and forgets the ones that went away. An interface XDP
// cannot take is handed to nftables.
func (a *Agent) syncInterfaces(ctx context.Context) error {
	want, err := a.wantedInterfaces()
	if err != nil {
		return err
	}
	if len(want) == 0 {
		a.log.Warn("no interface to enforce on (no default route yet?); waiting for one")
	}
	if a.dp == nil { // nftables mode: the hooks cover every interface
		a.mu.Lock()
		a.ifaces = map[string]InterfaceState{}
		for _, name := range want {
			a.ifaces[name] = InterfaceState{Interface: name, Mode: "nftables"}
		}
		a.mu.Unlock()
		return nil
	}
	var fallback bool
	seen := map[string]bool{}
	for _, name := range want {
		seen[name] = true
		if _, err := netlink.LinkByName(name); err != nil {
			a.mu.Lock()
			_, held := a.ifaces[name]
			delete(a.ifaces, name)
			a.mu.Unlock()
			if held {
				// The device went away, and its bpf_link with it: drop
				// the pin. It is attached again if it comes back.
				if err := a.dp.Detach(name); err != nil && !errors.Is(err, loader.ErrNotAttached) {
					a.log.Debug("unpin link of a removed interface", "interface", name, "error", err)
				}
				a.log.Info("interface gone; it will be attached again if it comes back", "interface", name)
			} else {
				a.log.Warn("configured interface not present; it will be attached when it appears", "interface", name)
			}
			continue
		}
		a.mu.Lock()
		cur, held := a.ifaces[name]
		a.mu.Unlock()
		if held && cur.Mode != "nftables" {
			continue
		}
		att, err := a.dp.Attach(name, loader.Mode(a.cfg.XDPMode), a.cfg.Takeover)
		st := InterfaceState{Interface: name, Mode: att.Mode}
		if err != nil {
			st = InterfaceState{Interface: name, Mode: "nftables", Error: err.Error()}
			fallback = true
			switch {
			case held && cur == st:
				// Tried again at every pass; said once.
				a.log.Debug("XDP still cannot attach; nftables enforces there", "interface", name, "error", err)
			case errors.Is(err, loader.ErrForeignProgram):
				a.log.Error("interface runs another XDP program; set takeover: true to replace it. nftables enforces there meanwhile", "interface", name, "error", err)
			default:
				a.log.Error("XDP attach failed; nftables enforces there", "interface", name, "error", err)
			}
		} else {
			a.log.Info("XDP attached", "interface", name, "mode", att.Mode, "program_id", att.ProgramID)
		}
		a.mu.Lock()
		a.ifaces[name] = st
		a.mu.Unlock()
	}
	// Forget interfaces that are gone or no longer wanted.
	a.mu.Lock()
	var gone []string
	for name := range a.ifaces {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	a.mu.Unlock()
	for _, name := range gone {
		if _, err := netlink.LinkByName(name); err == nil && a.cfg.Interfaces != nil && !a.cfg.AutoInterfaces() {
			continue
		}
		if err := a.dp.Detach(name); err != nil && !errors.Is(err, loader.ErrNotAttached) {
			a.log.Warn("forget interface", "interface", name, "error", err)
		}
		a.mu.Lock()
		delete(a.ifaces, name)
		a.mu.Unlock()
		a.log.Info("interface forgotten", "interface", name)
	}
	if fallback || a.cfg.Mode == config.ModeBoth {
		return a.enableNFT(ctx)
	}
	return nil
}

// subscribeInterfaces subscribes to link (and, for auto, route) changes.
// It is called before the first pass over the interfaces, so that nothing
// that changes in between is missed.
func (a *Agent) subscribeInterfaces(ctx context.Context) (links chan netlink.LinkUpdate, routes chan netlink.RouteUpdate) {
	links = make(chan netlink.LinkUpdate, 64)
	routes = make(chan netlink.RouteUpdate, 64)
	done := ctx.Done()
	onErr := func(err error) { a.log.Debug("netlink subscription", "error", err) }
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		a.log.Warn("cannot follow interface changes; polling instead", "error", err)
	}
	if a.cfg.AutoInterfaces() {
		if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
			a.log.Warn("cannot follow route changes; polling instead", "error", err)
		}
	}
	return links, routes
}

// watchInterfaces follows links and routes coming and going: a wanted
// interface that appears is attached, one that disappears is forgotten.
// A periodic pass catches anything the subscriptions missed.
func (a *Agent) watchInterfaces(ctx context.Context, links chan netlink.LinkUpdate, routes chan netlink.RouteUpdate) {
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	// Coalesce bursts of events into one pass.
	var pending <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-links:
			pending = time.After(200 * time.Millisecond)
		case <-routes:
			pending = time.After(200 * time.Millisecond)
		case <-tick.C:
			pending = time.After(0)
		case <-pending:
			pending = nil
			if err := a.syncInterfaces(ctx); err != nil {
				a.log.Error("interfaces", "error", err)
			}
		}
	}
}
