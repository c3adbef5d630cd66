package edgesync

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/xdpgate/xdpgate/internal/cloudflare"
	"github.com/xdpgate/xdpgate/internal/configfile"
	"github.com/xdpgate/xdpgate/internal/lapi"
)

// Config is edgesync's configuration file.
type Config struct {
	// LAPI.
	APIURL             string            `yaml:"api_url"`
	APIKey             configfile.Secret `yaml:"api_key,omitempty"`
	APIKeyFile         string            `yaml:"api_key_file,omitempty"`
	CertPath           string            `yaml:"cert_path,omitempty"`
	KeyPath            string            `yaml:"key_path,omitempty"`
	CACertPath         string            `yaml:"ca_cert_path,omitempty"`
	InsecureSkipVerify bool              `yaml:"insecure_skip_verify"`
	UpdateFrequency    time.Duration     `yaml:"update_frequency"`

	// Selection.
	Origins                 []string `yaml:"origins"`
	SupportedDecisionsTypes []string `yaml:"supported_decisions_types"`
	IPv6Prefix              int      `yaml:"ipv6_prefix"`
	MaxItems                int      `yaml:"max_items"`
	OriginPriority          []string `yaml:"origin_priority"`

	// Safety and pacing.
	MaxDeleteRatio float64       `yaml:"max_delete_ratio"`
	SyncInterval   time.Duration `yaml:"sync_interval"`

	LogLevel string `yaml:"log_level"`

	Cloudflare CloudflareConfig `yaml:"cloudflare"`
}

// CloudflareConfig is the cloudflare: section.
type CloudflareConfig struct {
	AccountID    string            `yaml:"account_id"`
	APIToken     configfile.Secret `yaml:"api_token,omitempty"`
	APITokenFile string            `yaml:"api_token_file,omitempty"`
	BaseURL      string            `yaml:"base_url"`
	ListName     string            `yaml:"list_name"`
	Zones        []ZoneConfig      `yaml:"zones"`
}

// ZoneConfig is one entry of cloudflare.zones.
type ZoneConfig struct {
	ZoneID       string   `yaml:"zone_id"`
	ExcludeHosts []string `yaml:"exclude_hosts,omitempty"`
}

// Defaults returns the configuration a file starts from.
func Defaults() Config {
	return Config{
		APIURL:                  "http://127.0.0.1:8080/",
		UpdateFrequency:         10 * time.Second,
		Origins:                 []string{"crowdsec", "cscli", "console"},
		SupportedDecisionsTypes: []string{"ban", "captcha"},
		IPv6Prefix:              64,
		MaxItems:                10000,
		OriginPriority:          []string{"crowdsec", "console", "cscli", "cscli-import", "lists", "CAPI"},
		MaxDeleteRatio:          0.5,
		SyncInterval:            2 * time.Minute,
		LogLevel:                "info",
		Cloudflare: CloudflareConfig{
			BaseURL:  cloudflare.DefaultBaseURL,
			ListName: "crowdsec_ban",
		},
	}
}

// ReadConfig reads path (and path.local) over the defaults, without reading
// the secret files or validating: what `edgesync run -T` prints.
func ReadConfig(path string) (Config, error) {
	cfg := Defaults()
	err := configfile.Load(path, &cfg)
	return cfg, err
}

// LoadConfig reads path (and path.local) over the defaults, reads the
// secret files and validates the result.
func LoadConfig(path string) (Config, error) {
	cfg, err := ReadConfig(path)
	if err != nil {
		return cfg, err
	}
	if err := cfg.resolveSecrets(); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

func (c *Config) resolveSecrets() error {
	if c.APIKeyFile != "" {
		if c.APIKey != "" {
			return errors.New("api_key and api_key_file are both set")
		}
		k, err := configfile.ReadSecretFile(c.APIKeyFile)
		if err != nil {
			return fmt.Errorf("api_key_file: %w", err)
		}
		c.APIKey = k
	}
	if c.Cloudflare.APITokenFile != "" {
		if c.Cloudflare.APIToken != "" {
			return errors.New("cloudflare.api_token and cloudflare.api_token_file are both set")
		}
		t, err := configfile.ReadSecretFile(c.Cloudflare.APITokenFile)
		if err != nil {
			return fmt.Errorf("cloudflare.api_token_file: %w", err)
		}
		c.Cloudflare.APIToken = t
	}
	return nil
}

// Validate checks the configuration and normalizes host names and types.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if u, err := url.Parse(c.APIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("api_url %q is not an http(s) URL", c.APIURL)
	}
	if c.APIKey == "" && (c.CertPath == "" || c.KeyPath == "") {
		bad("set api_key, api_key_file, or cert_path and key_path")
	}
	if (c.CertPath == "") != (c.KeyPath == "") {
		bad("cert_path and key_path go together")
	}
	if c.APIKey != "" && c.CertPath != "" {
		bad("use api_key (or api_key_file) or cert_path and key_path, not both")
	}
	if c.UpdateFrequency < time.Second {
		bad("update_frequency %s is shorter than 1s", c.UpdateFrequency)
	}
	if len(c.Origins) == 0 {
		bad("origins is empty: name the origins to push (crowdsec, cscli, console, ...)")
	}
	if len(c.SupportedDecisionsTypes) == 0 {
		bad("supported_decisions_types is empty")
	}
	for i, t := range c.SupportedDecisionsTypes {
		c.SupportedDecisionsTypes[i] = strings.ToLower(strings.TrimSpace(t))
	}
	if c.IPv6Prefix < MinPrefixV6 || c.IPv6Prefix > 64 {
		bad("ipv6_prefix %d: Cloudflare lists take IPv6 CIDRs /%d to /64", c.IPv6Prefix, MinPrefixV6)
	}
	if c.MaxItems < 1 {
		bad("max_items %d is not positive", c.MaxItems)
	}
	if c.MaxDeleteRatio <= 0 || c.MaxDeleteRatio > 1 {
		bad("max_delete_ratio %v is not in (0, 1]", c.MaxDeleteRatio)
	}
	if c.SyncInterval < 10*time.Second {
		bad("sync_interval %s is shorter than 10s", c.SyncInterval)
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}

	cf := &c.Cloudflare
	if cf.AccountID == "" {
		bad("cloudflare.account_id is empty")
	}
	if cf.APIToken == "" {
		bad("set cloudflare.api_token or cloudflare.api_token_file")
	}
	if u, err := url.Parse(cf.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("cloudflare.base_url %q is not an http(s) URL", cf.BaseURL)
	}
	if err := cloudflare.ValidateListName(cf.ListName); err != nil {
		bad("cloudflare.list_name: %w", err)
	}
	seen := map[string]bool{}
	for i := range cf.Zones {
		z := &cf.Zones[i]
		if z.ZoneID == "" {
			bad("cloudflare.zones[%d]: zone_id is empty", i)
			continue
		}
		if seen[z.ZoneID] {
			bad("cloudflare.zones: zone %s is listed twice", z.ZoneID)
		}
		seen[z.ZoneID] = true
		hosts, err := NormalizeHosts(z.ExcludeHosts)
		if err != nil {
			bad("cloudflare.zones[%d]: %w", i, err)
			continue
		}
		z.ExcludeHosts = hosts
		if _, err := Expression(cf.ListName, hosts); err != nil {
			bad("cloudflare.zones[%d] (%s): %w", i, z.ZoneID, err)
		}
	}
	return errors.Join(errs...)
}

// SelectOptions returns the selection part of the configuration.
func (c *Config) SelectOptions() SelectOptions {
	return SelectOptions{
		Origins:        c.Origins,
		Types:          c.SupportedDecisionsTypes,
		IPv6Prefix:     c.IPv6Prefix,
		MaxItems:       c.MaxItems,
		OriginPriority: c.OriginPriority,
	}
}

// ZoneList returns the zones as the syncer takes them.
func (c *Config) ZoneList() []Zone {
	out := make([]Zone, len(c.Cloudflare.Zones))
	for i, z := range c.Cloudflare.Zones {
		out[i] = Zone{ID: z.ZoneID, ExcludeHosts: z.ExcludeHosts}
	}
	return out
}

// ParseLogLevel reads log_level.
func ParseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log_level %q: use debug, info, warn or error", s)
	}
	return l, nil
}

// LAPIConfig returns the decision stream's configuration: the configured
// origins, the Ip and Range scopes.
func (c *Config) LAPIConfig(userAgent string) lapi.Config {
	return lapi.Config{
		URL:                c.APIURL,
		APIKey:             c.APIKey,
		CertPath:           c.CertPath,
		KeyPath:            c.KeyPath,
		CACertPath:         c.CACertPath,
		InsecureSkipVerify: c.InsecureSkipVerify,
		UpdateFrequency:    c.UpdateFrequency,
		Origins:            c.Origins,
		Scopes:             []string{"ip", "range"},
		UserAgent:          userAgent,
	}
}
