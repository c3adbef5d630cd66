package lapitest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

type streamDecision struct {
	ID       int64  `json:"id"`
	Origin   string `json:"origin"`
	Scenario string `json:"scenario"`
	Scope    string `json:"scope"`
	Type     string `json:"type"`
	Value    string `json:"value"`
	Duration string `json:"duration"`
}

type stream struct {
	New     []streamDecision `json:"new"`
	Deleted []streamDecision `json:"deleted"`
}

// pull reads the decision stream as a bouncer does.
func pull(t *testing.T, l *LAPI, key string, startup bool) stream {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%sv1/decisions/stream?startup=%t", l.URL(), startup), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Api-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %s: %s", resp.Status, body)
	}
	var s stream
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("stream: %v: %s", err, body)
	}
	return s
}

func values(ds []streamDecision) map[string]streamDecision {
	out := map[string]streamDecision{}
	for _, d := range ds {
		out[d.Value] = d
	}
	return out
}

func TestLAPI(t *testing.T) {
	l := Start(t)
	t.Logf("LAPI on %s answered %v after start", l.Addr(), l.StartupTime())
	key := l.AddBouncer(t, "test")
	if len(key) < 16 {
		t.Fatalf("key %q too short", key)
	}

	if s := pull(t, l, key, true); len(s.New) != 0 {
		t.Fatalf("fresh LAPI has decisions: %+v", s.New)
	}

	l.AddDecision(t, "--ip", "192.0.2.1", "--duration", "4h", "--type", "ban")
	l.AddDecision(t, "--range", "198.51.100.0/24", "--duration", "1h", "--type", "captcha", "--reason", "lapitest/range")
	s := pull(t, l, key, true)
	got := values(s.New)
	if d, ok := got["192.0.2.1"]; !ok || d.Scope != "Ip" || d.Type != "ban" || d.Origin != "cscli" {
		t.Errorf("192.0.2.1: %+v in %+v", d, s.New)
	}
	if d, ok := got["198.51.100.0/24"]; !ok || d.Scope != "Range" || d.Type != "captcha" || d.Scenario != "lapitest/range" {
		t.Errorf("198.51.100.0/24: %+v in %+v", d, s.New)
	}

	l.DeleteDecisions(t, "--ip", "192.0.2.1")
	s = pull(t, l, key, false)
	if _, ok := values(s.Deleted)["192.0.2.1"]; !ok {
		t.Errorf("delete not in the delta: %+v", s)
	}

	// Restart: same port, same data, same key.
	begin := time.Now()
	l.Stop(t)
	t.Logf("stopped in %v", time.Since(begin))
	if l.Running() {
		t.Fatal("running after Stop")
	}
	if _, err := http.Get(l.URL()); err == nil {
		t.Fatal("LAPI still answers after Stop")
	}
	l.Start(t)
	t.Logf("restart answered after %v", l.StartupTime())
	s = pull(t, l, key, true)
	if got := values(s.New); len(got) != 1 || got["198.51.100.0/24"].Type != "captcha" {
		t.Errorf("after restart: %+v", s.New)
	}
	if out := l.Cscli(t, "bouncers", "list"); !strings.Contains(out, "test") {
		t.Errorf("bouncer lost on restart:\n%s", out)
	}
}

func TestImport(t *testing.T) {
	l := Start(t)
	key := l.AddBouncer(t, "test")
	rows := []ImportRow{
		{Value: "192.0.2.1"},
		{Value: "192.0.2.2", Type: "captcha", Duration: "30m", Reason: "lapitest/import"},
		{Value: "203.0.113.0/24", Scope: "range"},
		{Value: "2001:db8::1"},
	}
	for i := range 1000 {
		rows = append(rows, ImportRow{Value: fmt.Sprintf("100.64.%d.%d", i/256, i%256)})
	}
	begin := time.Now()
	l.Import(t, rows)
	t.Logf("imported %d decisions in %v", len(rows), time.Since(begin))

	got := values(pull(t, l, key, true).New)
	if len(got) != len(rows) {
		t.Fatalf("stream holds %d decisions, want %d", len(got), len(rows))
	}
	if d := got["192.0.2.2"]; d.Type != "captcha" || d.Scenario != "lapitest/import" || d.Origin != "cscli-import" {
		t.Errorf("192.0.2.2: %+v", d)
	}
	// 1.4.6 imports a range with scope Ip (see ImportRow).
	if d, ok := got["203.0.113.0/24"]; !ok || (d.Scope != "Ip" && d.Scope != "Range") {
		t.Errorf("range: %+v", d)
	}
	if d := got["192.0.2.1"]; d.Type != "ban" || !strings.HasPrefix(d.Duration, "3h59m") {
		t.Errorf("defaults: %+v", d)
	}
}

// TestParallel runs instances side by side, as the test binaries of
// several packages do.
func TestParallel(t *testing.T) {
	var mu sync.Mutex
	addrs := map[string]bool{}
	for i := range 3 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			l := Start(t)
			mu.Lock()
			if addrs[l.Addr()] {
				t.Errorf("two instances on %s", l.Addr())
			}
			addrs[l.Addr()] = true
			mu.Unlock()
			key := l.AddBouncer(t, "test")
			ip := fmt.Sprintf("192.0.2.%d", i+1)
			l.AddDecision(t, "--ip", ip)
			if s := pull(t, l, key, true); len(s.New) != 1 || s.New[0].Value != ip {
				t.Errorf("instance %d sees %+v, want only %s", i, s.New, ip)
			}
		})
	}
}

func TestStartFailureShowsLog(t *testing.T) {
	l := Start(t)
	l.Stop(t)
	// Break the configuration: crowdsec must exit, and start must say so
	// with the log.
	if err := os.WriteFile(l.ConfigPath(), []byte("api: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := l.start()
	if err == nil {
		l.Stop(t)
		t.Fatal("crowdsec started with a broken configuration")
	}
	if !strings.Contains(err.Error(), "exited before answering") {
		t.Errorf("error %q does not say crowdsec exited", err)
	}
	if tail := l.logTail(); !strings.Contains(tail, "lapitest: starting crowdsec") {
		t.Errorf("log tail lacks the start marker:\n%s", tail)
	}
}

// BenchmarkImport100k measures the bulk path tests use to load a large
// decision set, against adding one decision with cscli.
func BenchmarkImport100k(b *testing.B) {
	l := Start(b)
	rows := make([]ImportRow, 100_000)
	for i := range rows {
		rows[i] = ImportRow{Value: fmt.Sprintf("100.%d.%d.%d", 64+i>>16, i>>8&255, i&255)}
	}
	begin := time.Now()
	l.AddDecision(b, "--ip", "192.0.2.1")
	one := time.Since(begin)
	b.ResetTimer()
	for b.Loop() {
		l.Import(b, rows)
	}
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(len(rows))/per.Seconds(), "decisions/s")
	b.ReportMetric(float64(one)*float64(len(rows))/float64(per), "x-vs-cscli-add")
}
