package nftfallback

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string // substrings of the error, one per problem; none: valid
	}{
		{name: "zero value is the default", cfg: Config{}},
		{name: "all hooks", cfg: Config{Hooks: []string{"prerouting", "input", "forward"}, Priority: -300}},
		{name: "ingress", cfg: Config{Hooks: []string{"input", "ingress"}}, want: []string{"Hooks[1]: ingress is bound to one device"}},
		{name: "unknown hook", cfg: Config{Hooks: []string{"output"}}, want: []string{`Hooks[0]: unknown hook "output"`}},
		{name: "hook twice", cfg: Config{Hooks: []string{"input", "input"}}, want: []string{`Hooks[1]: hook "input" given twice`}},
		{name: "long table", cfg: Config{Table4: strings.Repeat("t", 256)}, want: []string{"Table4: name is longer than 255 bytes"}},
		{name: "control character", cfg: Config{Table6: "a\x00b"}, want: []string{"Table6: name"}},
		{name: "priority", cfg: Config{Priority: math.MaxInt32 + 1}, want: []string{"Priority: 2147483648 does not fit"}},
		{name: "netns", cfg: Config{NetNS: -1}, want: []string{"NetNS: negative"}},
		{name: "every problem at once", cfg: Config{Hooks: []string{"output", "ingress"}, NetNS: -2},
			want: []string{"Hooks[0]", "Hooks[1]", "NetNS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate() = %v, want an ErrInvalidConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to mention %q", err, w)
				}
			}
			if n := strings.Count(err.Error(), ErrInvalidConfig.Error()); n != len(tc.want) {
				t.Errorf("Validate() reports %d problems, want %d: %v", n, len(tc.want), err)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.Table4 != "xdpgate" || c.Table6 != "xdpgate6" || c.Priority != -10 || !slices.Equal(c.Hooks, []string{"input", "forward"}) {
		t.Errorf("defaults = %+v", c)
	}
	hooks := []string{"forward"}
	c = Config{Hooks: hooks, Priority: -200}.withDefaults()
	c.Hooks[0] = "input"
	if hooks[0] != "forward" || c.Priority != -200 {
		t.Errorf("withDefaults shares or overrides the caller's values: %v %+v", hooks, c)
	}
}
