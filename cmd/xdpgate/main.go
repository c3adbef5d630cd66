// Command xdpgate is a CrowdSec remediation component that drops banned
// sources in XDP, before netfilter and before kube-proxy's DNAT, with
// nftables as its fallback.
//
//	xdpgate run -c FILE              the node agent
//	xdpgate config -c FILE -t|-T     validate, or print the merged config
//	xdpgate status [--json]          attachments, map use, last LAPI pull, counters
//	xdpgate list [--v4|--v6] [--json]
//	xdpgate check IP [--json]        would a packet from IP be dropped? (exit 0 yes, 1 no, 2 error)
//	xdpgate stats [--json]           the program's counters
//	xdpgate uninstall                detach and remove everything
//
// Every inspection command reads the pinned maps: it works with the agent
// stopped, as `bpftool map dump pinned` does.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/xdpgate/xdpgate/internal/agent"
	"github.com/xdpgate/xdpgate/internal/config"
	"github.com/xdpgate/xdpgate/internal/lapi"
	"github.com/xdpgate/xdpgate/internal/loader"
	"github.com/xdpgate/xdpgate/internal/maps"
	"github.com/xdpgate/xdpgate/internal/nftfallback"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const defaultConfig = "/etc/xdpgate/xdpgate.yaml"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: xdpgate COMMAND [flags]

commands:
  run        run the node agent (-c FILE)
  config     validate (-t) or print (-T) the merged configuration
  status     attached interfaces, map use, last LAPI pull, counters
  list       active bans with origin and expiry (--v4, --v6)
  check IP   would a packet from IP be dropped? exit 0 yes, 1 no, 2 error
  stats      the XDP program's counters
  uninstall  detach the program and remove pins and nftables tables
  version    print the version

Run 'xdpgate COMMAND -h' for a command's flags.
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	cmd, args := args[0], args[1:]
	var err error
	code := 0
	switch cmd {
	case "run":
		err = cmdRun(args, stderr)
	case "config":
		err = cmdConfig(args, stdout, stderr)
	case "status":
		err = cmdStatus(args, stdout, stderr)
	case "list":
		err = cmdList(args, stdout, stderr)
	case "check":
		code, err = cmdCheck(args, stdout, stderr)
	case "stats":
		err = cmdStats(args, stdout, stderr)
	case "uninstall":
		err = cmdUninstall(args, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "xdpgate", version)
	case "help", "-h", "--help":
		usage(stdout)
	default:
		fmt.Fprintf(stderr, "xdpgate: unknown command %q\n", cmd)
		usage(stderr)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "xdpgate %s: %v\n", cmd, err)
		return 2
	}
	return code
}

// common holds the flags every inspection command takes.
type common struct {
	fs      *flag.FlagSet
	config  string
	pinPath string
	json    bool
}

func newCommon(name string, stderr io.Writer) *common {
	c := &common{fs: flag.NewFlagSet("xdpgate "+name, flag.ContinueOnError)}
	c.fs.SetOutput(stderr)
	c.fs.StringVar(&c.config, "c", "", "config file (default "+defaultConfig+" when it exists)")
	c.fs.StringVar(&c.pinPath, "pin-path", "", "bpffs directory of the pins (default: the config's pin_path, else "+loader.DefaultPinPath+")")
	c.fs.BoolVar(&c.json, "json", false, "print JSON")
	return c
}

// cfg returns the config named by -c, the default file if it exists, or
// the defaults.
func (c *common) cfg() (*config.Config, error) {
	path := c.config
	if path == "" {
		if _, err := os.Stat(defaultConfig); err != nil {
			d := config.Default()
			return &d, nil
		}
		path = defaultConfig
	}
	return config.Load(path)
}

func (c *common) pin() (string, *config.Config, error) {
	cfg, err := c.cfg()
	if err != nil {
		return "", nil, err
	}
	if c.pinPath != "" {
		return c.pinPath, cfg, nil
	}
	return cfg.PinPath, cfg, nil
}

func (c *common) openMaps() (*maps.Maps, func(), error) {
	pin, _, err := c.pin()
	if err != nil {
		return nil, nil, err
	}
	pm, err := loader.OpenPinnedMaps(pin)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (is the agent installed? `xdpgate run` pins under %s)", err, pin)
	}
	m, err := maps.New(pm)
	if err != nil {
		pm.Close()
		return nil, nil, err
	}
	return m, func() { pm.Close() }, nil
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.SlogLevel()}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// gcPercent is the agent's GOGC unless the environment sets one.
const gcPercent = 25

func cmdRun(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("xdpgate run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", defaultConfig, "config file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)
	if _, set := os.LookupEnv("GOGC"); !set {
		// A node agent idles between small deltas; what matters is its
		// footprint on every node. The heap may grow by a quarter of
		// what is live (not the default double) before a collection:
		// the startup set of 100k decisions peaks ~10 MB lower, for
		// a few ms more of GC. GOGC in the environment overrides it.
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var a *agent.Agent
	src, err := lapi.New(lapi.Config{
		URL: cfg.APIURL, APIKey: cfg.APIKey,
		CertPath: cfg.CertPath, KeyPath: cfg.KeyPath, CACertPath: cfg.CACertPath, InsecureSkipVerify: cfg.InsecureSkipVerify,
		UpdateFrequency: cfg.UpdateFrequency,
		Origins:         cfg.Origins, Scopes: cfg.Scopes,
		ScenariosContaining: cfg.ScenariosContaining, ScenariosNotContaining: cfg.ScenariosNotContaining,
		UserAgent: "xdpgate/" + version,
	}, lapi.WithLogger(log), lapi.WithDecisionSets(), lapi.WithPullObserver(func(ev lapi.PullEvent) {
		if a != nil {
			a.ObservePull(ev)
		}
	}))
	if err != nil {
		return err
	}
	log.Info("starting xdpgate", "version", version, "mode", cfg.Mode, "pin_path", cfg.PinPath, "lapi", cfg.APIURL)
	a, err = agent.New(ctx, cfg, src, log)
	if err != nil {
		return err
	}
	defer a.Close()
	// Usage metrics for `cscli metrics`, on LAPIs that take them (1.6+).
	go func() {
		_ = src.RunUsageMetrics(ctx, lapi.UsageMetrics{
			Type: "xdpgate", Version: version, Interval: cfg.MetricsInterval, Update: a.UsageMetrics,
		})
	}()
	return a.Run(ctx)
}

func cmdConfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("xdpgate config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", defaultConfig, "config file")
	test := fs.Bool("t", false, "validate the configuration and exit")
	dump := fs.Bool("T", false, "print the merged configuration (defaults, file, .local overlay) with secrets redacted")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	switch {
	case *dump:
		return cfg.Dump(stdout)
	case *test:
		fmt.Fprintf(stdout, "%s: configuration OK\n", *path)
		return nil
	default:
		return errors.New("say -t (validate) or -T (print)")
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

type statusOut struct {
	PinPath     string               `json:"pin_path"`
	Installed   bool                 `json:"installed"`
	Attachments []loader.Attachment  `json:"attachments"`
	Maps        []maps.Fill          `json:"maps,omitempty"`
	Agent       *agent.State         `json:"agent,omitempty"`
	Counters    *maps.Stats          `json:"counters,omitempty"`
	NFTables    nftfallback.Counters `json:"nftables,omitempty"`
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	c := newCommon("status", stderr)
	if err := c.fs.Parse(args); err != nil {
		return err
	}
	pin, cfg, err := c.pin()
	if err != nil {
		return err
	}
	out := statusOut{PinPath: pin}
	if atts, err := loader.Attachments(pin); err == nil {
		out.Attachments = atts
	}
	if m, closeFn, err := c.openMaps(); err == nil {
		defer closeFn()
		out.Installed = true
		out.Maps, _ = m.Fill()
		if st, err := m.Stats(); err == nil {
			out.Counters = &st
		}
	}
	out.Agent, _ = agent.ReadState(pin)
	if nft, err := nftfallback.New(nftfallback.Config{Table4: cfg.NFTables.IPv4Table, Table6: cfg.NFTables.IPv6Table, Hooks: cfg.NFTables.Hooks}, slog.New(slog.DiscardHandler)); err == nil {
		out.NFTables, _ = nft.Counters()
		nft.Close()
	}
	if c.json {
		return printJSON(stdout, out)
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintf(w, "pin path:\t%s\n", pin)
	if !out.Installed {
		fmt.Fprintf(w, "xdp:\tnot installed (no pinned maps)\n")
	}
	fmt.Fprintf(w, "\ninterface\tmode\tprogram\t\n")
	for _, a := range out.Attachments {
		fmt.Fprintf(w, "%s\t%s\t%d\t\n", a.Interface, a.Mode, a.ProgramID)
	}
	if out.Agent != nil {
		for _, s := range out.Agent.Interfaces {
			if s.Mode == "nftables" {
				fmt.Fprintf(w, "%s\tnftables\t-\t%s\n", s.Interface, s.Error)
			}
		}
	}
	if len(out.Maps) > 0 {
		fmt.Fprintf(w, "\nmap\tentries\tcapacity\tuse\t\n")
		for _, f := range out.Maps {
			fmt.Fprintf(w, "%s\t%d\t%d\t%.1f%%\t\n", f.Map, f.Entries, f.Capacity, 100*float64(f.Entries)/float64(max(f.Capacity, 1)))
		}
	}
	if s := out.Agent; s != nil {
		fmt.Fprintf(w, "\nagent pid:\t%d (state written %s)\n", s.PID, s.Updated.Format(time.RFC3339))
		fmt.Fprintf(w, "backends:\t%s\n", strings.Join(s.Backends, ", "))
		if s.LastPull.IsZero() {
			fmt.Fprintf(w, "last LAPI pull:\tnever\n")
		} else {
			fmt.Fprintf(w, "last LAPI pull:\t%s (%s ago)\n", s.LastPull.Format(time.RFC3339), time.Since(s.LastPull).Round(time.Second))
		}
		if s.LastError != "" {
			fmt.Fprintf(w, "last LAPI error:\t%s\n", s.LastError)
		}
		if !s.LastResync.IsZero() {
			fmt.Fprintf(w, "last full resync:\t%s (%d corrections)\n", s.LastResync.Format(time.RFC3339), s.Corrected)
		}
	} else {
		fmt.Fprintf(w, "\nagent:\tno state file (%s)\n", agent.StatePath(pin))
	}
	if st := out.Counters; st != nil {
		fmt.Fprintf(w, "\ndropped:\t%d packets (v4 %d, v6 %d)\n", st.DropV4.Packets+st.DropV6.Packets, st.DropV4.Packets, st.DropV6.Packets)
		fmt.Fprintf(w, "passed:\t%d packets\n", st.PassV4.Packets+st.PassV6.Packets+st.PassNotIP.Packets+st.PassMalformed.Packets+st.AllowedV4.Packets+st.AllowedV6.Packets)
		if n := st.WouldDropV4.Packets + st.WouldDropV6.Packets; n > 0 {
			fmt.Fprintf(w, "would drop (count-only):\t%d packets\n", n)
		}
	}
	nftInUse := out.Agent != nil && slices.Contains(out.Agent.Backends, "nftables")
	for _, nc := range out.NFTables {
		if nftInUse || nc.Packets > 0 {
			fmt.Fprintf(w, "nftables %s %s:\t%d packets dropped\n", nc.Family, nc.Hook, nc.Packets)
		}
	}
	return nil
}

func cmdList(args []string, stdout, stderr io.Writer) error {
	c := newCommon("list", stderr)
	v4 := c.fs.Bool("v4", false, "IPv4 bans only")
	v6 := c.fs.Bool("v6", false, "IPv6 bans only")
	if err := c.fs.Parse(args); err != nil {
		return err
	}
	m, closeFn, err := c.openMaps()
	if err != nil {
		return err
	}
	defer closeFn()
	all, err := m.List(context.Background())
	if err != nil {
		return err
	}
	type row struct {
		Prefix netip.Prefix `json:"prefix"`
		Origin string       `json:"origin"`
		Expiry *time.Time   `json:"expiry"`
	}
	rows := []row{}
	now := time.Now()
	for _, e := range all {
		if *v4 && !e.Prefix.Addr().Is4() || *v6 && !e.Prefix.Addr().Is6() {
			continue
		}
		if !e.Expiry.IsZero() && !e.Expiry.After(now) {
			continue // expired: no longer drops, awaiting the agent's pruning
		}
		r := row{Prefix: e.Prefix, Origin: e.Origin}
		if !e.Expiry.IsZero() {
			t := e.Expiry
			r.Expiry = &t
		}
		rows = append(rows, r)
	}
	if c.json {
		return printJSON(stdout, rows)
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintln(w, "PREFIX\tORIGIN\tEXPIRES")
	for _, r := range rows {
		exp := "never"
		if r.Expiry != nil {
			exp = fmt.Sprintf("%s (in %s)", r.Expiry.Format(time.RFC3339), time.Until(*r.Expiry).Round(time.Second))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", r.Prefix, r.Origin, exp)
	}
	return nil
}

func cmdCheck(args []string, stdout, stderr io.Writer) (int, error) {
	c := newCommon("check", stderr)
	// Accept the address before or after the flags.
	var addrArg string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		addrArg, args = args[0], args[1:]
	}
	if err := c.fs.Parse(args); err != nil {
		return 2, err
	}
	if addrArg == "" && c.fs.NArg() > 0 {
		addrArg = c.fs.Arg(0)
	}
	if addrArg == "" {
		return 2, errors.New("usage: xdpgate check IP [--json]")
	}
	addr, err := netip.ParseAddr(addrArg)
	if err != nil {
		return 2, fmt.Errorf("not an IP address: %q", addrArg)
	}
	m, closeFn, err := c.openMaps()
	if err != nil {
		return 2, err
	}
	defer closeFn()
	res, err := m.Check(addr)
	if err != nil {
		return 2, err
	}
	code := 1
	if res.Verdict == maps.VerdictDrop {
		code = 0
	}
	if c.json {
		return code, printJSON(stdout, res)
	}
	switch res.Verdict {
	case maps.VerdictDrop:
		fmt.Fprintf(stdout, "%s: DROP, banned by %s (origin %s, %s)\n", res.Addr, res.Ban.Prefix, res.Ban.Origin, expiryText(res.Ban.Expiry))
	case maps.VerdictAllowed:
		fmt.Fprintf(stdout, "%s: PASS, allowlisted by %s (over the ban %s, origin %s)\n", res.Addr, res.Allow, res.Ban.Prefix, res.Ban.Origin)
	default:
		fmt.Fprintf(stdout, "%s: PASS, not banned\n", res.Addr)
	}
	return code, nil
}

func expiryText(t time.Time) string {
	if t.IsZero() {
		return "no expiry"
	}
	return fmt.Sprintf("expires %s, in %s", t.Format(time.RFC3339), time.Until(t).Round(time.Second))
}

func cmdStats(args []string, stdout, stderr io.Writer) error {
	c := newCommon("stats", stderr)
	if err := c.fs.Parse(args); err != nil {
		return err
	}
	m, closeFn, err := c.openMaps()
	if err != nil {
		return err
	}
	defer closeFn()
	st, err := m.Stats()
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, st)
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	defer w.Flush()
	fmt.Fprintln(w, "verdict\tfamily\tpackets\tbytes\t")
	for _, r := range []struct {
		v, f string
		c    maps.Counter
	}{
		{"pass", "ipv4", st.PassV4}, {"pass", "ipv6", st.PassV6},
		{"drop", "ipv4", st.DropV4}, {"drop", "ipv6", st.DropV6},
		{"allowlisted", "ipv4", st.AllowedV4}, {"allowlisted", "ipv6", st.AllowedV6},
		{"would drop", "ipv4", st.WouldDropV4}, {"would drop", "ipv6", st.WouldDropV6},
		{"not IP", "-", st.PassNotIP}, {"malformed", "-", st.PassMalformed},
	} {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t\n", r.v, r.f, r.c.Packets, r.c.Bytes)
	}
	fmt.Fprintln(w, "\t\t\t\t")
	fmt.Fprintln(w, "origin\tfamily\tdropped\tbytes\t")
	origins := make([]string, 0, len(st.DropsByOrigin))
	for o := range st.DropsByOrigin {
		origins = append(origins, o)
	}
	sort.Strings(origins)
	for _, o := range origins {
		for _, f := range []string{"ipv4", "ipv6"} {
			if v, ok := st.DropsByOrigin[o][f]; ok {
				fmt.Fprintf(w, "%s\t%s\t%d\t%d\t\n", o, f, v.Packets, v.Bytes)
			}
		}
	}
	return nil
}

func cmdUninstall(args []string, stdout, stderr io.Writer) error {
	c := newCommon("uninstall", stderr)
	if err := c.fs.Parse(args); err != nil {
		return err
	}
	pin, cfg, err := c.pin()
	if err != nil {
		return err
	}
	var errs []error
	_, statErr := os.Stat(pin)
	if err := loader.Uninstall(pin); err != nil {
		errs = append(errs, err)
	} else if errors.Is(statErr, fs.ErrNotExist) {
		fmt.Fprintf(stdout, "xdp: nothing pinned under %s\n", pin)
	} else {
		fmt.Fprintf(stdout, "xdp: program detached, pins under %s removed\n", pin)
	}
	nft, err := nftfallback.New(nftfallback.Config{Table4: cfg.NFTables.IPv4Table, Table6: cfg.NFTables.IPv6Table, Hooks: cfg.NFTables.Hooks}, slog.New(slog.DiscardHandler))
	if err == nil {
		switch n, err := nft.Uninstall(); {
		case err != nil:
			errs = append(errs, err)
		case n == 0:
			fmt.Fprintf(stdout, "nftables: no table %s or %s\n", cfg.NFTables.IPv4Table, cfg.NFTables.IPv6Table)
		default:
			fmt.Fprintf(stdout, "nftables: tables %s and %s removed\n", cfg.NFTables.IPv4Table, cfg.NFTables.IPv6Table)
		}
		nft.Close()
	} else {
		errs = append(errs, err)
	}
	_ = os.Remove(agent.StatePath(pin))
	return errors.Join(errs...)
}
