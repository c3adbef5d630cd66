// Package config is the configuration of the xdpgate agent.
//
// The file is YAML. Where xdpgate does what cs-firewall-bouncer does, it
// keeps that bouncer's key names (api_url, api_key, update_frequency,
// supported_decisions_types, prometheus.listen_port, ...), so an existing
// bouncer configuration carries over with few changes. Files are read with
// internal/configfile: ${VAR} references are expanded from the environment,
// an optional "<file>.local" overlay is merged over the main file, and an
// unknown key is an error.
//
// Load returns a Config with every value parsed (durations as
// time.Duration, the allowlist as []netip.Prefix) and validated; every error
// names the key it is about.
package config

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/xdpgate/xdpgate/internal/configfile"
)

// Mode selects the enforcement backends.
type Mode string

const (
	// ModeXDP drops in XDP, and nftables takes over on the interfaces
	// where no XDP program can be attached.
	ModeXDP Mode = "xdp"
	// ModeNFTables drops in nftables only.
	ModeNFTables Mode = "nftables"
	// ModeBoth enforces every ban in XDP and in nftables.
	ModeBoth Mode = "both"
)

// XDPMode selects how the XDP program is attached.
type XDPMode string

const (
	// XDPModeAuto tries native (driver) mode first and falls back to
	// generic mode on interfaces whose driver has no XDP support.
	XDPModeAuto XDPMode = "auto"
	// XDPModeNative attaches in driver mode only.
	XDPModeNative XDPMode = "native"
	// XDPModeGeneric attaches in generic (skb) mode only.
	XDPModeGeneric XDPMode = "generic"
)

// InterfacesAuto, as the only entry of interfaces, selects the interfaces
// that hold a default route, IPv4 or IPv6.
const InterfacesAuto = "auto"

// Config is the xdpgate agent's configuration. The yaml tags are the keys of
// the file; docs/configuration.md describes each.
type Config struct {
	// Local API connection.
	APIURL string `yaml:"api_url"`
	// APIKey is the bouncer key: the api_key of the file, or the content
	// of api_key_file once Load has read it.
	APIKey             configfile.Secret `yaml:"api_key,omitempty"`
	APIKeyFile         string            `yaml:"api_key_file,omitempty"`
	CertPath           string            `yaml:"cert_path,omitempty"`
	KeyPath            string            `yaml:"key_path,omitempty"`
	CACertPath         string            `yaml:"ca_cert_path,omitempty"`
	InsecureSkipVerify bool              `yaml:"insecure_skip_verify"`
	UpdateFrequency    time.Duration     `yaml:"update_frequency"`
	// ResyncInterval is how often the whole decision list is pulled again
	// (startup=true) and the kernel state reconciled against it; 0 never.
	ResyncInterval time.Duration `yaml:"resync_interval"`
	// MetricsInterval is how often usage metrics (drops and active
	// decisions per origin) are reported to LAPI, as go-cs-bouncer's
	// metrics_interval; 0 never. A LAPI older than 1.6 has no endpoint
	// for them, which is logged once.
	MetricsInterval time.Duration `yaml:"metrics_interval"`

	// Which decisions are enforced.
	SupportedDecisionsTypes []string `yaml:"supported_decisions_types"`
	Origins                 []string `yaml:"origins"`
	Scopes                  []string `yaml:"scopes"`
	ScenariosContaining     []string `yaml:"scenarios_containing"`
	ScenariosNotContaining  []string `yaml:"scenarios_not_containing"`
	DisableIPv6             bool     `yaml:"disable_ipv6"`
	// MinPrefixV4 and MinPrefixV6 are the broadest range decisions
	// enforced: a decision on a shorter prefix is skipped and counted.
	MinPrefixV4 int `yaml:"min_prefix_v4"`
	MinPrefixV6 int `yaml:"min_prefix_v6"`
	// Allowlist holds masked prefixes that are never dropped; addresses
	// are /32 or /128 and IPv4-mapped IPv6 values are IPv4.
	Allowlist []netip.Prefix `yaml:"allowlist"`

	// Enforcement.
	Mode       Mode     `yaml:"mode"`
	Interfaces []string `yaml:"interfaces"`
	XDPMode    XDPMode  `yaml:"xdp_mode"`
	PinPath    string   `yaml:"pin_path"`
	Takeover   bool     `yaml:"takeover"`
	CountOnly  bool     `yaml:"count_only"`
	Maps       MapSizes `yaml:"maps"`
	NFTables   NFTables `yaml:"nftables"`

	// Observability.
	LogLevel   string     `yaml:"log_level"`
	LogFormat  string     `yaml:"log_format"`
	Prometheus Prometheus `yaml:"prometheus"`

	// keyFromFile records that APIKey was read from APIKeyFile, so that
	// Validate still sees one source of the key and Dump leaves it out.
	keyFromFile bool
}

// MapSizes are the max_entries of the BPF maps.
type MapSizes struct {
	IPv4Exact  uint32 `yaml:"ipv4_exact"`
	IPv6Exact  uint32 `yaml:"ipv6_exact"`
	IPv4Ranges uint32 `yaml:"ipv4_ranges"`
	IPv6Ranges uint32 `yaml:"ipv6_ranges"`
	// Allowlist is the size of each of the IPv4 and IPv6 allowlist tries.
	Allowlist uint32 `yaml:"allowlist"`
}

// NFTables configures the nftables backend.
type NFTables struct {
	IPv4Table string   `yaml:"ipv4_table"`
	IPv6Table string   `yaml:"ipv6_table"`
	Hooks     []string `yaml:"hooks"`
	Priority  int32    `yaml:"priority"`
}

// Prometheus configures the listener of /metrics, /healthz and /readyz.
type Prometheus struct {
	Enabled    bool   `yaml:"enabled"`
	ListenAddr string `yaml:"listen_addr"`
	ListenPort int    `yaml:"listen_port"`
}

// Default returns the configuration used for every key a file leaves out.
func Default() Config {
	return Config{
		APIURL:                  "http://127.0.0.1:8080/",
		UpdateFrequency:         10 * time.Second,
		ResyncInterval:          5 * time.Minute,
		MetricsInterval:         15 * time.Minute,
		SupportedDecisionsTypes: []string{"ban"},
		Scopes:                  []string{"ip", "range"},
		MinPrefixV4:             8,
		MinPrefixV6:             16,
		Mode:                    ModeXDP,
		Interfaces:              []string{InterfacesAuto},
		XDPMode:                 XDPModeAuto,
		PinPath:                 "/sys/fs/bpf/xdpgate",
		Maps: MapSizes{
			IPv4Exact:  1 << 20,
			IPv6Exact:  1 << 18,
			IPv4Ranges: 1 << 16,
			IPv6Ranges: 1 << 16,
			Allowlist:  4096,
		},
		NFTables: NFTables{
			IPv4Table: "xdpgate",
			IPv6Table: "xdpgate6",
			Hooks:     []string{"input", "forward"},
			Priority:  -10,
		},
		LogLevel:  "info",
		LogFormat: "text",
		Prometheus: Prometheus{
			Enabled:    true,
			ListenAddr: "127.0.0.1",
			ListenPort: 60601,
		},
	}
}

// Load reads the configuration at path over the defaults, merges the
// optional path+".local" overlay, validates it, and reads api_key_file.
func Load(path string) (*Config, error) {
	c := Default()
	if err := configfile.Load(path, &c); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.APIKeyFile != "" {
		key, err := configfile.ReadSecretFile(c.APIKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, &FieldError{Key: "api_key_file", Err: err})
		}
		c.APIKey, c.keyFromFile = key, true
	}
	return &c, nil
}

// AutoInterfaces reports whether the interfaces are the ones holding a
// default route rather than a list of names.
func (c *Config) AutoInterfaces() bool {
	return len(c.Interfaces) == 1 && c.Interfaces[0] == InterfacesAuto
}

// SlogLevel returns log_level as a slog level.
func (c *Config) SlogLevel() slog.Level {
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// PrometheusAddr returns the host:port the metrics and health listener
// binds to.
func (c *Config) PrometheusAddr() string {
	return net.JoinHostPort(c.Prometheus.ListenAddr, strconv.Itoa(c.Prometheus.ListenPort))
}
