package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/xdpgate/xdpgate/internal/config"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// TestReadmeExample loads the configuration the README shows.
func TestReadmeExample(t *testing.T) {
	p := filepath.Join(t.TempDir(), "xdpgate.yaml")
	if err := os.WriteFile(p, []byte(testutil.ReadmeBlock(t, "# /etc/xdpgate/xdpgate.yaml")), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CROWDSEC_BOUNCER_KEY", "readme-key")
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatalf("the README's example: %v", err)
	}
	if cfg.APIKey.Reveal() != "readme-key" || len(cfg.Allowlist) != 3 {
		t.Errorf("the README's example read as %+v", cfg)
	}
}
