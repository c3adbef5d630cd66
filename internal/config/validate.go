package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

var (
	logLevels     = []string{"debug", "info", "warn", "error"}
	logFormats    = []string{"text", "json"}
	decisionTypes = []string{"ban", "captcha"}
	scopes        = []string{"ip", "range"}
	modes         = []Mode{ModeXDP, ModeNFTables, ModeBoth}
	xdpModes      = []XDPMode{XDPModeAuto, XDPModeNative, XDPModeGeneric}
	nftHooks      = []string{"prerouting", "input", "forward"}

	// nft(8) accepts these names without quoting.
	nftName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,63}$`)
)

// Validate checks every key and returns one FieldError per problem, joined.
func (c *Config) Validate() error {
	var v validator
	c.validateLAPI(&v)
	c.validateFilters(&v)
	c.validateEnforcement(&v)
	c.validateObservability(&v)
	return errors.Join(v.errs...)
}

type validator struct{ errs []error }

func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, fieldErr(key, format, args...))
}

func (v *validator) oneOf(key, got string, allowed []string) {
	if !slices.Contains(allowed, got) {
		v.add(key, "must be one of %s, got %q", strings.Join(allowed, ", "), got)
	}
}

// list checks a list of names: each one allowed (when allowed is not nil),
// none empty, none twice, and at least one when required.
func (v *validator) list(key string, got, allowed []string, required bool) {
	if required && len(got) == 0 {
		if allowed != nil {
			v.add(key, "must list at least one of %s", strings.Join(allowed, ", "))
		} else {
			v.add(key, "must not be empty")
		}
		return
	}
	for i, s := range got {
		k := fmt.Sprintf("%s[%d]", key, i)
		switch {
		case strings.TrimSpace(s) == "":
			v.add(k, "must not be empty")
		case allowed != nil && !slices.Contains(allowed, s):
			v.add(k, "must be one of %s, got %q", strings.Join(allowed, ", "), s)
		case slices.Index(got, s) < i:
			v.add(k, "%q is listed twice", s)
		}
	}
}

func (c *Config) validateLAPI(v *validator) {
	u, err := url.Parse(c.APIURL)
	switch {
	case c.APIURL == "":
		v.add("api_url", "must be set")
	case err != nil:
		v.add("api_url", "invalid URL %q", c.APIURL)
	case u.Scheme != "http" && u.Scheme != "https":
		v.add("api_url", "must be an http:// or https:// URL, got %q", c.APIURL)
	case u.Host == "":
		v.add("api_url", "has no host: %q", c.APIURL)
	}

	inline := c.APIKey != "" && !c.keyFromFile
	file := c.APIKeyFile != ""
	cert := c.CertPath != "" || c.KeyPath != ""
	switch {
	case !inline && !file && !cert:
		v.add("api_key", "set one of api_key, api_key_file, or cert_path with key_path")
	case inline && file:
		v.add("api_key_file", "cannot be used together with api_key")
	case cert && (inline || file):
		v.add("cert_path", "client certificate authentication cannot be used together with api_key or api_key_file")
	}
	if inline && strings.ContainsFunc(c.APIKey.Reveal(), func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		v.add("api_key", "contains white space or control characters")
	}
	if cert {
		if c.CertPath == "" {
			v.add("cert_path", "must be set when key_path is")
		}
		if c.KeyPath == "" {
			v.add("key_path", "must be set when cert_path is")
		}
		if err == nil && u.Scheme == "http" {
			v.add("api_url", "client certificate authentication needs an https:// URL, got %q", c.APIURL)
		}
	}

	if c.UpdateFrequency <= 0 {
		v.add("update_frequency", "must be positive, got %q", formatDuration(c.UpdateFrequency))
	}
	if c.MetricsInterval < 0 || (c.MetricsInterval > 0 && c.MetricsInterval < time.Minute) {
		v.add("metrics_interval", "must be 0 (never) or at least 1m, got %q", formatDuration(c.MetricsInterval))
	}
	if c.ResyncInterval < 0 || (c.ResyncInterval > 0 && c.ResyncInterval < c.UpdateFrequency) {
		v.add("resync_interval", "must be 0 (never) or at least update_frequency (%s), got %q",
			formatDuration(c.UpdateFrequency), formatDuration(c.ResyncInterval))
	}
}

func (c *Config) validateFilters(v *validator) {
	v.list("supported_decisions_types", c.SupportedDecisionsTypes, decisionTypes, true)
	v.list("scopes", c.Scopes, scopes, true)
	v.list("origins", c.Origins, nil, false)
	v.list("scenarios_containing", c.ScenariosContaining, nil, false)
	v.list("scenarios_not_containing", c.ScenariosNotContaining, nil, false)

	if c.MinPrefixV4 < 1 || c.MinPrefixV4 > 32 {
		v.add("min_prefix_v4", "must be between 1 and 32, got %d", c.MinPrefixV4)
	}
	if c.MinPrefixV6 < 1 || c.MinPrefixV6 > 128 {
		v.add("min_prefix_v6", "must be between 1 and 128, got %d", c.MinPrefixV6)
	}

	var v4, v6 int
	for i, p := range c.Allowlist {
		switch {
		case !p.IsValid():
			v.add(fmt.Sprintf("allowlist[%d]", i), "invalid prefix")
		case p.Addr().Is4():
			v4++
		default:
			v6++
		}
	}
	if limit := int(c.Maps.Allowlist); c.Maps.Allowlist > 0 && (v4 > limit || v6 > limit) {
		v.add("allowlist", "%d IPv4 and %d IPv6 entries do not fit maps.allowlist (%d per family)", v4, v6, limit)
	}
}

func (c *Config) validateEnforcement(v *validator) {
	if !slices.Contains(modes, c.Mode) {
		v.add("mode", "must be one of xdp, nftables, both, got %q", c.Mode)
	}
	if !slices.Contains(xdpModes, c.XDPMode) {
		v.add("xdp_mode", "must be one of auto, native, generic, got %q", c.XDPMode)
	}

	switch {
	case len(c.Interfaces) == 0:
		v.add("interfaces", "must list interface names, or be %q", InterfacesAuto)
	case slices.Contains(c.Interfaces, InterfacesAuto) && len(c.Interfaces) > 1:
		v.add("interfaces", "%q cannot be combined with interface names", InterfacesAuto)
	case !c.AutoInterfaces():
		for i, name := range c.Interfaces {
			k := fmt.Sprintf("interfaces[%d]", i)
			if err := checkIfName(name); err != nil {
				v.add(k, "%v", err)
			} else if slices.Index(c.Interfaces, name) < i {
				v.add(k, "%q is listed twice", name)
			}
		}
	}

	switch {
	case c.PinPath == "":
		v.add("pin_path", "must be set")
	case !filepath.IsAbs(c.PinPath) || filepath.Clean(c.PinPath) != c.PinPath || c.PinPath == "/":
		v.add("pin_path", "must be a clean absolute directory path, such as /sys/fs/bpf/xdpgate, got %q", c.PinPath)
	}

	for _, m := range []struct {
		key string
		n   uint32
	}{
		{"maps.ipv4_exact", c.Maps.IPv4Exact},
		{"maps.ipv6_exact", c.Maps.IPv6Exact},
		{"maps.ipv4_ranges", c.Maps.IPv4Ranges},
		{"maps.ipv6_ranges", c.Maps.IPv6Ranges},
		{"maps.allowlist", c.Maps.Allowlist},
	} {
		if m.n == 0 {
			v.add(m.key, "must be positive, got 0")
		}
	}

	for _, t := range []struct{ key, name string }{
		{"nftables.ipv4_table", c.NFTables.IPv4Table},
		{"nftables.ipv6_table", c.NFTables.IPv6Table},
	} {
		if !nftName.MatchString(t.name) {
			v.add(t.key, "must be a table name of letters, digits and _ . - (at most 64), got %q", t.name)
		}
	}
	v.list("nftables.hooks", c.NFTables.Hooks, nftHooks, true)
}

func (c *Config) validateObservability(v *validator) {
	v.oneOf("log_level", c.LogLevel, logLevels)
	v.oneOf("log_format", c.LogFormat, logFormats)
	if _, err := netip.ParseAddr(c.Prometheus.ListenAddr); err != nil {
		v.add("prometheus.listen_addr", "must be an IP address, such as 127.0.0.1 or ::, got %q", c.Prometheus.ListenAddr)
	}
	if p := c.Prometheus.ListenPort; p < 1 || p > 65535 {
		v.add("prometheus.listen_port", "must be between 1 and 65535, got %d", p)
	}
}

// checkIfName applies the kernel's rules for interface names
// (dev_valid_name): 1 to 15 bytes, no '/', ':' or white space, not "." or
// "..".
func checkIfName(name string) error {
	switch {
	case name == "":
		return errors.New("must not be empty")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("invalid interface name %q", name)
	case strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r == ':' || r <= ' ' || r == 0x7f }):
		return fmt.Errorf("invalid interface name %q: no '/', ':' or white space allowed", name)
	}
	return nil
}
