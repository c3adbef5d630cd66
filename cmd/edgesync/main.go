// Command edgesync keeps CrowdSec's local bans in a Cloudflare IP list and
// a zone WAF rule that blocks it, for hosts proxied by Cloudflare, whose
// traffic never reaches the node. See docs/edgesync.md.
//
//	edgesync run [-c FILE] [--once] [--dry-run] [--force] [-t] [-T]
//	edgesync version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"gopkg.in/yaml.v3"

	"github.com/xdpgate/xdpgate/internal/cloudflare"
	"github.com/xdpgate/xdpgate/internal/edgesync"
	"github.com/xdpgate/xdpgate/internal/lapi"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

// DefaultConfig is where the configuration is read from without -c.
const DefaultConfig = "/etc/edgesync/edgesync.yaml"

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func getVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "devel"
}

const usage = `usage:
  edgesync run [-c FILE] [--once] [--dry-run] [--force]
  edgesync run [-c FILE] -t     check the configuration
  edgesync run [-c FILE] -T     print the configuration, secrets redacted
  edgesync version
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "edgesync %s\n", getVersion())
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "edgesync: unknown command %q\n%s", args[0], usage)
	return exitUsage
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("edgesync run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", DefaultConfig, "configuration `file`")
	once := fs.Bool("once", false, "sync once and exit (for a CronJob)")
	dryRun := fs.Bool("dry-run", false, "print the plan and write nothing (implies --once)")
	force := fs.Bool("force", false, "override the delete guard (the first sync only, in daemon mode)")
	check := fs.Bool("t", false, "check the configuration and exit")
	dump := fs.Bool("T", false, "print the configuration as read, secrets redacted, and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "edgesync run: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}

	if *dump {
		cfg, err := edgesync.ReadConfig(*cfgPath)
		if err != nil {
			fmt.Fprintf(stderr, "edgesync: %v\n", err)
			return exitError
		}
		enc := yaml.NewEncoder(stdout)
		enc.SetIndent(2)
		if err := enc.Encode(cfg); err != nil {
			fmt.Fprintf(stderr, "edgesync: %v\n", err)
			return exitError
		}
		_ = enc.Close()
		return exitOK
	}

	cfg, err := edgesync.LoadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "edgesync: %v\n", err)
		return exitError
	}
	if *check {
		fmt.Fprintf(stdout, "%s: configuration OK\n", *cfgPath)
		return exitOK
	}

	level, _ := edgesync.ParseLogLevel(cfg.LogLevel)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ua := "edgesync/" + getVersion()

	cf, err := cloudflare.New(cloudflare.Config{
		AccountID: cfg.Cloudflare.AccountID,
		Token:     cfg.Cloudflare.APIToken,
		BaseURL:   cfg.Cloudflare.BaseURL,
		UserAgent: ua,
		Logger:    log.With("component", "cloudflare"),
	})
	if err != nil {
		fmt.Fprintf(stderr, "edgesync: %v\n", err)
		return exitError
	}
	src, err := lapi.New(cfg.LAPIConfig(ua), lapi.WithLogger(log.With("component", "lapi")))
	if err != nil {
		fmt.Fprintf(stderr, "edgesync: %v\n", err)
		return exitError
	}
	runner := &edgesync.Runner{
		Select: cfg.SelectOptions(),
		Syncer: &edgesync.Syncer{
			Client:         cf,
			ListName:       cfg.Cloudflare.ListName,
			Zones:          cfg.ZoneList(),
			MaxDeleteRatio: cfg.MaxDeleteRatio,
			Log:            log,
		},
		Interval: cfg.SyncInterval,
		Out:      stdout,
		Log:      log,
	}
	opt := edgesync.RunOptions{DryRun: *dryRun, Force: *force}

	if *once || *dryRun {
		_, err := runner.Once(ctx, src, opt)
		log.Debug("cloudflare requests", "count", cf.Requests())
		if err != nil {
			fmt.Fprintf(stderr, "edgesync: %v\n", err)
			return exitError
		}
		return exitOK
	}
	log.Info("edgesync started", "version", getVersion(), "list", cfg.Cloudflare.ListName,
		"zones", len(cfg.Cloudflare.Zones), "sync_interval", cfg.SyncInterval)
	if err := runner.Daemon(ctx, src, opt); err != nil {
		fmt.Fprintf(stderr, "edgesync: %v\n", err)
		return exitError
	}
	log.Info("edgesync stopped")
	return exitOK
}
