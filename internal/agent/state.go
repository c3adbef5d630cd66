package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// StateDir holds the agent's state files. bpffs takes no regular files, so
// what the CLI shows beyond the maps (last pull, interfaces) lives here.
var StateDir = "/run/xdpgate"

// State is what the agent records for `xdpgate status`.
type State struct {
	PID        int              `json:"pid"`
	Started    time.Time        `json:"started"`
	Updated    time.Time        `json:"updated"`
	Mode       string           `json:"mode"`
	Backends   []string         `json:"backends"`
	Interfaces []InterfaceState `json:"interfaces"`
	LastPull   time.Time        `json:"last_successful_pull,omitzero"`
	LastError  string           `json:"last_error,omitempty"`
	LastResync time.Time        `json:"last_resync,omitzero"`
	Corrected  int              `json:"last_resync_corrections"`
	Synced     bool             `json:"synced"`
}

// StatePath is the state file of the agent pinned at pinPath.
func StatePath(pinPath string) string {
	name := strings.Trim(strings.ReplaceAll(filepath.Clean(pinPath), "/", "_"), "_")
	return filepath.Join(StateDir, name+".json")
}

// ReadState reads the state file of the agent pinned at pinPath.
func ReadState(pinPath string) (*State, error) {
	b, err := os.ReadFile(StatePath(pinPath))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

func (a *Agent) writeState() {
	a.mu.Lock()
	s := State{
		PID: os.Getpid(), Started: a.started, Updated: time.Now(), Mode: string(a.cfg.Mode),
		LastPull: a.health.lastPull, LastError: a.health.lastError, LastResync: a.health.lastResync,
		Corrected: a.health.corrected, Synced: a.health.synced,
	}
	a.mu.Unlock()
	s.Backends = a.engine.Backends()
	s.Interfaces = a.interfaceStates()
	b, _ := json.MarshalIndent(s, "", "  ")
	p := StatePath(a.cfg.PinPath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		a.log.Debug("state file", "error", err)
		return
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		_ = os.Rename(tmp, p)
	}
}
