package nftfallback

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/google/nftables"
)

// Defaults of Config.
const (
	DefaultTable4   = "xdpgate"
	DefaultTable6   = "xdpgate6"
	DefaultPriority = -10
)

// DefaultHooks returns the hooks used when Config.Hooks is empty: input for
// traffic to the host, forward for traffic it routes (DNAT'd service
// traffic of Kubernetes and Docker crosses forward, not input).
func DefaultHooks() []string { return []string{"input", "forward"} }

// ErrInvalidConfig wraps every error of Config.Validate.
var ErrInvalidConfig = errors.New("invalid nftables configuration")

// Config selects the tables and hooks of the nftables backend.
type Config struct {
	// Table4 is the name of the table of family ip; default "xdpgate".
	Table4 string
	// Table6 is the name of the table of family ip6; default "xdpgate6".
	Table6 string
	// Hooks are the netfilter hooks that get a drop chain: "prerouting",
	// "input" or "forward"; default input and forward.
	Hooks []string
	// Priority of those chains; 0 means the default, -10, which runs just
	// before the usual filter chains (priority 0). Below -100 a prerouting
	// chain runs before destination NAT.
	Priority int
	// DisableIPv6 leaves IPv6 alone: no ip6 table, and IPv6 entries are
	// skipped (and counted).
	DisableIPv6 bool
	// NetNS is a file descriptor of the network namespace to program;
	// 0 means the namespace of the calling process.
	NetNS int
}

// hookNums are the hooks a table of family ip or ip6 can hold a drop chain
// in. ingress is not among them: it exists only in netdev and inet tables
// and is bound to one device.
var hookNums = map[string]nftables.ChainHook{
	"prerouting": *nftables.ChainHookPrerouting,
	"input":      *nftables.ChainHookInput,
	"forward":    *nftables.ChainHookForward,
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	if c.Table4 == "" {
		c.Table4 = DefaultTable4
	}
	if c.Table6 == "" {
		c.Table6 = DefaultTable6
	}
	if len(c.Hooks) == 0 {
		c.Hooks = DefaultHooks()
	} else {
		c.Hooks = append([]string(nil), c.Hooks...)
	}
	if c.Priority == 0 {
		c.Priority = DefaultPriority
	}
	return c
}

// Validate reports every problem of the configuration, defaults applied,
// each naming the field.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...)))
	}
	checkName := func(field, name string) {
		switch {
		case len(name) > 255:
			bad("%s: name is longer than 255 bytes", field)
		case strings.ContainsAny(name, "\x00\n"):
			bad("%s: name %q holds a control character", field, name)
		}
	}
	checkName("Table4", c.Table4)
	checkName("Table6", c.Table6)
	seen := make(map[string]bool)
	for i, h := range c.Hooks {
		switch _, ok := hookNums[h]; {
		case h == "ingress":
			bad("Hooks[%d]: ingress is bound to one device and exists only in netdev and inet tables, not in the ip and ip6 tables of this backend: use prerouting", i)
		case !ok:
			bad("Hooks[%d]: unknown hook %q (want prerouting, input or forward)", i, h)
		case seen[h]:
			bad("Hooks[%d]: hook %q given twice", i, h)
		}
		seen[h] = true
	}
	if c.Priority < math.MinInt32 || c.Priority > math.MaxInt32 {
		bad("Priority: %d does not fit in 32 bits", c.Priority)
	}
	if c.NetNS < 0 {
		bad("NetNS: negative file descriptor %d", c.NetNS)
	}
	return errors.Join(errs...)
}
