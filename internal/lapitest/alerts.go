package lapitest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Alert is one decision pushed inside an alert, the way a CrowdSec agent
// (origin crowdsec) or the console (CAPI, lists) does. Unlike cscli, this
// keeps the origin it carries and can put several decisions on one value.
type Alert struct {
	Origin   string // "crowdsec" (default), "CAPI", "lists", ...
	Scope    string // "Ip" (default) or "Range"
	Value    string
	Type     string // "ban" (default)
	Duration string // "4h" (default)
	Scenario string // "lapitest/alert" (default)
}

type watcher struct {
	once  sync.Once
	token string
	err   string
}

// PostAlert pushes decisions through a machine account of the LAPI, which
// it registers and logs in on first use.
func (l *LAPI) PostAlert(tb testing.TB, alerts ...Alert) {
	tb.Helper()
	w := &l.watcher
	w.once.Do(func() {
		const user, pass = "lapitestwatcher", "lapitest-watcher-password-0123456789"
		l.Cscli(tb, "machines", "add", user, "--password", pass, "--force", "-f", filepath.Join(l.dir, "watcher.yaml"))
		body, _ := json.Marshal(map[string]any{"machine_id": user, "password": pass, "scenarios": []string{}})
		res, err := l.HTTPClient().Post(l.URL()+"v1/watchers/login", "application/json", bytes.NewReader(body))
		if err != nil {
			w.err = err.Error()
			return
		}
		defer res.Body.Close()
		raw, _ := io.ReadAll(res.Body)
		var out struct {
			Token string `json:"token"`
		}
		if res.StatusCode != 200 || json.Unmarshal(raw, &out) != nil || out.Token == "" {
			w.err = "watcher login: " + res.Status + " " + string(raw)
			return
		}
		w.token = out.Token
	})
	if w.err != "" {
		tb.Fatalf("lapitest: %s", w.err)
	}
	now := time.Now().UTC().Format(time.RFC3339)
	var body []map[string]any
	for _, a := range alerts {
		a.Origin = or(a.Origin, "crowdsec")
		a.Scope = or(a.Scope, "Ip")
		a.Type = or(a.Type, "ban")
		a.Duration = or(a.Duration, "4h")
		a.Scenario = or(a.Scenario, "lapitest/alert")
		body = append(body, map[string]any{
			"scenario": a.Scenario, "scenario_hash": "", "scenario_version": "", "message": "lapitest " + a.Origin,
			"events_count": 1, "capacity": 0, "leakspeed": "0", "simulated": false, "start_at": now, "stop_at": now,
			"events": []map[string]any{{"timestamp": now, "meta": []map[string]string{{"key": "test", "value": "1"}}}},
			"source": map[string]any{"scope": a.Scope, "value": a.Value},
			"decisions": []map[string]any{{
				"origin": a.Origin, "scope": a.Scope, "value": a.Value, "type": a.Type, "duration": a.Duration,
				"scenario": a.Scenario, "simulated": false,
			}},
		})
	}
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", l.URL()+"v1/alerts", bytes.NewReader(raw))
	req.Header.Set("Authorization", "Bearer "+w.token)
	req.Header.Set("Content-Type", "application/json")
	res, err := l.HTTPClient().Do(req)
	if err != nil {
		tb.Fatalf("lapitest: post alert: %v", err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	if res.StatusCode != 201 && res.StatusCode != 200 {
		tb.Fatalf("lapitest: post alert: %s %s", res.Status, out)
	}
}
