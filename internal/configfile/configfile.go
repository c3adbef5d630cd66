// Package configfile reads the YAML configuration files of xdpgate and
// edgesync the way CrowdSec reads its own: ${VAR} expansion from the
// environment, an optional "<file>.local" overlay merged over the main file,
// and strict decoding in which an unknown key is an error naming the key.
package configfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// ErrUndefinedVariable is returned when the file names an environment
// variable that is not set.
var ErrUndefinedVariable = errors.New("undefined environment variable")

// Redacted is what a Secret prints as when it is set.
const Redacted = "<redacted>"

// Secret is a string that never prints: the API keys and tokens of the
// configuration. Its YAML, JSON and fmt forms are Redacted (or empty when the
// secret is empty), so `config -T` and logs cannot leak it.
type Secret string

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return Redacted
}

// GoString implements fmt.GoStringer, for %#v.
func (s Secret) GoString() string { return fmt.Sprintf("%q", s.String()) }

// MarshalYAML implements yaml.Marshaler.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(fmt.Sprintf("%q", s.String())), nil }

// LogValue keeps the secret out of slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// Reveal returns the secret itself, for the one place that sends it.
func (s Secret) Reveal() string { return string(s) }

// ReadSecretFile returns the first line of a file holding a key or token,
// as mounted from a Kubernetes Secret, without surrounding white space.
func ReadSecretFile(path string) (Secret, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSpace(line)
	if line == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return Secret(line), nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// Expand replaces every ${VAR} with the variable's value. Like CrowdSec it
// leaves a bare $VAR alone (a "$" is common in keys and regexps), and unlike
// a shell it refuses a variable that is not set instead of writing nothing.
func Expand(data []byte) ([]byte, error) {
	var missing []string
	out := envRef.ReplaceAllFunc(data, func(m []byte) []byte {
		name := string(m[2 : len(m)-1])
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
			return m
		}
		return []byte(v)
	})
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrUndefinedVariable, strings.Join(missing, ", "))
	}
	return out, nil
}

// Load reads path and, if it exists, path+".local", expands both, merges the
// overlay over the main file (mappings key by key, everything else replaced
// whole) and decodes the result strictly into out. out should hold the
// defaults already: keys absent from the files keep them.
func Load(path string, out any) error {
	root, err := readNode(path)
	if err != nil {
		return err
	}
	local, err := readNode(path + ".local")
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		root = merge(root, local)
	}
	if root == nil {
		return nil // an empty file: all defaults
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	if err := enc.Encode(root); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return Decode(path, &buf, out)
}

// Decode decodes one YAML document strictly: unknown keys are errors.
func Decode(name string, r io.Reader, out any) error {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func readNode(path string) (*yaml.Node, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	data, err := Expand(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil
	}
	n := doc.Content[0]
	if n.Kind != yaml.MappingNode && !(n.Kind == yaml.ScalarNode && n.Tag == "!!null") {
		return nil, fmt.Errorf("%s: the top level must be a mapping of keys", path)
	}
	return n, nil
}

// merge lays over on top of base: mapping keys are merged recursively, any
// other value in over replaces the one in base.
func merge(base, over *yaml.Node) *yaml.Node {
	if base == nil {
		return over
	}
	if over == nil {
		return base
	}
	if base.Kind != yaml.MappingNode || over.Kind != yaml.MappingNode {
		return over
	}
	out := *base
	out.Content = append([]*yaml.Node(nil), base.Content...)
	for i := 0; i+1 < len(over.Content); i += 2 {
		k, v := over.Content[i], over.Content[i+1]
		found := false
		for j := 0; j+1 < len(out.Content); j += 2 {
			if out.Content[j].Value == k.Value {
				out.Content[j+1] = merge(out.Content[j+1], v)
				found = true
				break
			}
		}
		if !found {
			out.Content = append(out.Content, k, v)
		}
	}
	return &out
}
