package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/xdpgate/xdpgate/internal/edgesync"
	"github.com/xdpgate/xdpgate/internal/testutil"
)

// TestReadmeExample loads the configuration the README shows.
func TestReadmeExample(t *testing.T) {
	p := filepath.Join(t.TempDir(), "edgesync.yaml")
	if err := os.WriteFile(p, []byte(testutil.ReadmeBlock(t, "# /etc/edgesync/edgesync.yaml")), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EDGESYNC_BOUNCER_KEY", "readme-key")
	t.Setenv("CLOUDFLARE_API_TOKEN", "readme-token")
	cfg, err := edgesync.LoadConfig(p)
	if err != nil {
		t.Fatalf("the README's example: %v", err)
	}
	if len(cfg.Cloudflare.Zones) != 1 || cfg.MaxItems != 10000 {
		t.Errorf("the README's example read as %+v", cfg)
	}
}
