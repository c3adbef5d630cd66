package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrUnknownKey is the error of a key that the configuration does not have.
var ErrUnknownKey = errors.New("unknown key")

// FieldError is a problem with the value of one key. Key is the dotted path
// of the key in the file, such as "prometheus.listen_port" or
// "allowlist[2]".
type FieldError struct {
	Key string
	Err error
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Err.Error() }

func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(key, format string, args ...any) *FieldError {
	return &FieldError{Key: key, Err: fmt.Errorf(format, args...)}
}

var (
	durationType   = reflect.TypeFor[time.Duration]()
	prefixListType = reflect.TypeFor[[]netip.Prefix]()
	stringListType = reflect.TypeFor[[]string]()
	yamlLinePrefix = regexp.MustCompile(`^line \d+: `)
)

// UnmarshalYAML decodes a mapping of keys over c: keys the mapping does not
// name keep their value, so c should hold Default() first. Unlike plain
// yaml.v3 decoding, every error names the key it is about (line numbers
// would point into the merged document, not into the user's file), durations
// are Go duration strings, the allowlist takes bare addresses, and a list of
// names may be written as a single name.
func (c *Config) UnmarshalYAML(n *yaml.Node) error {
	return decodeStruct(n, reflect.ValueOf(c).Elem(), "")
}

// MarshalYAML writes durations as duration strings and the allowlist as
// strings, in the form UnmarshalYAML reads back. The API key prints
// redacted, and not at all when it was read from api_key_file.
func (c Config) MarshalYAML() (any, error) {
	if c.keyFromFile {
		c.APIKey = ""
	}
	return encodeStruct(reflect.ValueOf(c))
}

// Dump writes the configuration as YAML, the API key redacted: what
// `xdpgate config -T` prints. The output loads again with Load; a redacted
// inline api_key has to be put back by hand.
func (c *Config) Dump(w io.Writer) error {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return fmt.Errorf("dump config: %w", err)
	}
	return enc.Close()
}

// yamlKey returns the key of a struct field and whether it is omitted when
// empty; "" for fields that are not part of the file.
func yamlKey(f reflect.StructField) (string, bool) {
	if !f.IsExported() {
		return "", false
	}
	name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" || name == "" {
		return "", false
	}
	return name, opts == "omitempty"
}

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

func decodeStruct(n *yaml.Node, v reflect.Value, prefix string) error {
	n = resolve(n)
	if isNull(n) {
		return nil // "prometheus:" with nothing under it: keep the defaults
	}
	if n.Kind != yaml.MappingNode {
		key := strings.TrimSuffix(prefix, ".")
		if key == "" {
			return errors.New("the top level must be a mapping of keys")
		}
		return fieldErr(key, "must be a mapping of keys, got %s", kindName(n))
	}
	t := v.Type()
	fields := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		if name, _ := yamlKey(t.Field(i)); name != "" {
			fields[name] = i
		}
	}
	seen := make(map[string]bool, len(n.Content)/2)
	var errs []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := resolve(n.Content[i]), resolve(n.Content[i+1])
		key := prefix + k.Value
		if seen[k.Value] {
			errs = append(errs, fieldErr(key, "set more than once"))
			continue
		}
		seen[k.Value] = true
		idx, ok := fields[k.Value]
		if !ok {
			err := &FieldError{Key: key, Err: ErrUnknownKey}
			if near := closest(k.Value, fields); near != "" {
				err.Err = fmt.Errorf("%w (did you mean %s?)", ErrUnknownKey, prefix+near)
			}
			errs = append(errs, err)
			continue
		}
		if err := decodeValue(val, v.Field(idx), key); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func decodeValue(n *yaml.Node, v reflect.Value, key string) error {
	switch {
	case v.Type() == durationType:
		d, err := parseDuration(n)
		if err != nil {
			return &FieldError{Key: key, Err: err}
		}
		v.SetInt(int64(d))
		return nil
	case v.Type() == prefixListType:
		ps, err := parsePrefixes(n, key)
		if err != nil {
			return err
		}
		v.Set(reflect.ValueOf(ps))
		return nil
	case v.Type() == stringListType && n.Kind == yaml.ScalarNode && !isNull(n):
		v.Set(reflect.ValueOf([]string{n.Value})) // "interfaces: auto"
		return nil
	case v.Kind() == reflect.Struct:
		return decodeStruct(n, v, key+".")
	}
	// Decode into a fresh value so that a failed decode leaves the
	// default in place.
	p := reflect.New(v.Type())
	if err := n.Decode(p.Interface()); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return &FieldError{Key: key, Err: err}
		}
		if want := expected(v.Type()); want != "" {
			return fieldErr(key, "must be %s, got %s", want, kindName(n))
		}
		msgs := make([]string, len(te.Errors))
		for i, m := range te.Errors {
			msgs[i] = yamlLinePrefix.ReplaceAllString(m, "")
		}
		return fieldErr(key, "%s", strings.Join(msgs, "; "))
	}
	if e := p.Elem(); e.Kind() == reflect.Slice && e.Len() == 0 {
		v.SetZero() // "origins: []" and an absent list are the same
	} else {
		v.Set(e)
	}
	return nil
}

// expected describes the values a field of type t takes, for errors.
func expected(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64:
		return "an integer"
	case reflect.Int8, reflect.Int16, reflect.Int32:
		bits := t.Bits() - 1
		return fmt.Sprintf("an integer from %d to %d", -(int64(1) << bits), int64(1)<<bits-1)
	case reflect.Uint8, reflect.Uint16, reflect.Uint32:
		return fmt.Sprintf("an integer from 0 to %d", uint64(1)<<t.Bits()-1)
	case reflect.String:
		return "a string"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.String {
			return "a list of strings"
		}
	}
	return ""
}

func parseDuration(n *yaml.Node) (time.Duration, error) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		return 0, fmt.Errorf("must be a duration such as 10s or 5m, got %s", kindName(n))
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want a number with a unit, such as 10s, 5m or 1h30m", n.Value)
	}
	return d, nil
}

// ParsePrefix parses an allowlist entry: a CIDR prefix, whose host bits are
// cleared, or an address, taken as a /32 or /128. IPv4-mapped IPv6 values
// become IPv4.
func ParsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid prefix %q", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("invalid address or prefix %q", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("prefix %q is an IPv4-mapped address with fewer than 96 bits", s)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func parsePrefixes(n *yaml.Node, key string) ([]netip.Prefix, error) {
	var items []*yaml.Node
	switch {
	case isNull(n):
		return nil, nil
	case n.Kind == yaml.ScalarNode:
		items = []*yaml.Node{n}
	case n.Kind == yaml.SequenceNode:
		items = n.Content
	default:
		return nil, fieldErr(key, "must be a list of addresses and CIDR prefixes, got %s", kindName(n))
	}
	out := make([]netip.Prefix, 0, len(items))
	var errs []error
	for i, it := range items {
		it = resolve(it)
		k := fmt.Sprintf("%s[%d]", key, i)
		if it.Kind != yaml.ScalarNode || isNull(it) {
			errs = append(errs, fieldErr(k, "must be an address or a CIDR prefix, got %s", kindName(it)))
			continue
		}
		p, err := ParsePrefix(it.Value)
		if err != nil {
			errs = append(errs, &FieldError{Key: k, Err: err})
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		out = nil
	}
	return out, errors.Join(errs...)
}

// closest returns the known key nearest to an unknown one, if it is near
// enough to be a typo.
func closest(key string, known map[string]int) string {
	best, bestDist := "", 3
	for k := range known {
		if d := editDistance(key, k); d < bestDist || (d == bestDist && best != "" && k < best) {
			best, bestDist = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func encodeStruct(v reflect.Value) (*yaml.Node, error) {
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	t := v.Type()
	for i := range t.NumField() {
		name, omitEmpty := yamlKey(t.Field(i))
		if name == "" {
			continue
		}
		fv := v.Field(i)
		if omitEmpty && fv.IsZero() {
			continue
		}
		val, err := encodeValue(fv)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out.Content = append(out.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: name}, val)
	}
	return out, nil
}

func encodeValue(v reflect.Value) (*yaml.Node, error) {
	switch {
	case v.Type() == durationType:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: formatDuration(time.Duration(v.Int()))}, nil
	case v.Type() == prefixListType:
		seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		for _, p := range v.Interface().([]netip.Prefix) {
			seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: p.String()})
		}
		if len(seq.Content) == 0 {
			seq.Style = yaml.FlowStyle
		}
		return seq, nil
	case v.Kind() == reflect.Struct:
		return encodeStruct(v)
	}
	n := &yaml.Node{}
	if err := n.Encode(v.Interface()); err != nil {
		return nil, err
	}
	if n.Kind == yaml.SequenceNode {
		n.Style = yaml.FlowStyle
	}
	return n, nil
}

// formatDuration is time.Duration.String without the trailing zero units:
// "5m" rather than "5m0s", "1h" rather than "1h0m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
