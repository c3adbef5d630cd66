// Package lapitest runs a real CrowdSec Local API for tests: a private
// `crowdsec -no-cs` with its own configuration, SQLite database and port
// on 127.0.0.1, and no online API. Tests drive it with cscli as an operator
// would.
//
// Several instances, in one test binary or in test binaries run in
// parallel, do not share anything but the crowdsec and cscli binaries.
// Without those binaries the tests skip, or fail under CI=true;
// scripts/install-crowdsec.sh installs them.
package lapitest

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/testutil"
)

const (
	// startTimeout bounds how long crowdsec may take to answer. It
	// answers in about 0.1 s on an idle machine.
	startTimeout = 30 * time.Second
	// stopTimeout bounds a graceful stop before SIGKILL.
	stopTimeout = 10 * time.Second
	// machine is the name cscli logs in to the LAPI with.
	machine = "lapitest"
)

// LAPI is one private Local API.
type LAPI struct {
	crowdsec, cscli string
	dir             string
	port            int
	// netns, when set, is the named network namespace crowdsec and cscli
	// run in (StartInNetNS).
	netns   string
	watcher watcher

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	exitErr error
	startup time.Duration
}

// Start starts a LAPI on a free port of 127.0.0.1 and stops it when the
// test ends. It fails the test if crowdsec does not come up, with the
// tail of crowdsec's log.
func Start(tb testing.TB) *LAPI {
	tb.Helper()
	return start(tb, "")
}

// StartInNetNS starts a LAPI on 127.0.0.1 inside the named network
// namespace, for tests whose agent runs there: crowdsec and every cscli
// command run through `ip netns exec`.
func StartInNetNS(tb testing.TB, netns string) *LAPI {
	tb.Helper()
	return start(tb, netns)
}

func start(tb testing.TB, netns string) *LAPI {
	tb.Helper()
	l := &LAPI{
		crowdsec: lookPath(tb, "crowdsec"),
		cscli:    lookPath(tb, "cscli"),
		dir:      tb.TempDir(),
		netns:    netns,
	}
	for _, d := range []string{"etc", "data", "hub"} {
		if err := os.MkdirAll(filepath.Join(l.dir, d), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	write(tb, filepath.Join(l.dir, "etc", "profiles.yaml"), profiles)
	write(tb, filepath.Join(l.dir, "etc", "simulation.yaml"), "simulation: off\n")
	tb.Cleanup(func() { l.stop(tb) })

	// Another process may take the port between our probe and crowdsec's
	// bind: try again on another one.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if l.port, err = freePort(); err != nil {
			tb.Fatalf("lapitest: %v", err)
		}
		write(tb, l.ConfigPath(), l.config())
		if attempt == 0 {
			// Registers the machine straight into the database; LAPI
			// need not run. Later attempts only change the port.
			l.run(tb, "machines", "add", machine, "--auto", "--force",
				"-f", l.credentialsPath(), "--url", l.URL())
		} else {
			l.rewriteCredentialsURL(tb)
		}
		if err = l.start(); err == nil {
			return l
		}
		if !strings.Contains(l.logTail(), "address already in use") {
			break
		}
	}
	tb.Fatalf("lapitest: %v\n%s", err, l.logTail())
	return nil
}

func lookPath(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testutil.SkipOrFail(tb, "needs %s on PATH (scripts/install-crowdsec.sh installs it)", name)
	}
	return p
}

// URL returns the LAPI's base URL, with a trailing slash.
func (l *LAPI) URL() string { return "http://" + l.Addr() + "/" }

// Addr returns the host:port the LAPI listens on.
func (l *LAPI) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.port)) }

// Dir returns the instance's directory: configuration, database and log.
func (l *LAPI) Dir() string { return l.dir }

// ConfigPath returns the path of the instance's config.yaml, for
// `cscli -c` or `crowdsec -c`.
func (l *LAPI) ConfigPath() string { return filepath.Join(l.dir, "etc", "config.yaml") }

// LogPath returns the file crowdsec writes its log to (all runs appended).
func (l *LAPI) LogPath() string { return filepath.Join(l.dir, "crowdsec.log") }

func (l *LAPI) credentialsPath() string {
	return filepath.Join(l.dir, "etc", "local_api_credentials.yaml")
}

// StartupTime returns how long the last start took until the LAPI answered.
func (l *LAPI) StartupTime() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.startup
}

// Running reports whether the crowdsec process is running.
func (l *LAPI) Running() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cmd == nil {
		return false
	}
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// Start starts the LAPI again after Stop, on the same port with the same
// database: bouncers, machines and decisions are kept.
func (l *LAPI) Start(tb testing.TB) {
	tb.Helper()
	if l.Running() {
		tb.Fatalf("lapitest: LAPI on %s already running", l.Addr())
	}
	if err := l.start(); err != nil {
		tb.Fatalf("lapitest: %v\n%s", err, l.logTail())
	}
}

// Stop stops the LAPI. The data stays for Start.
func (l *LAPI) Stop(tb testing.TB) {
	tb.Helper()
	l.stop(tb)
}

// AddBouncer registers a bouncer and returns its API key.
func (l *LAPI) AddBouncer(tb testing.TB, name string) string {
	tb.Helper()
	key := strings.TrimSpace(l.Cscli(tb, "bouncers", "add", name, "-o", "raw"))
	if key == "" {
		tb.Fatalf("lapitest: cscli bouncers add %s printed no key", name)
	}
	return key
}

// Cscli runs cscli against this instance and returns its standard output.
// It fails the test, with cscli's output, if cscli fails. Decision commands
// go through the running LAPI; bouncer and machine commands go straight to
// the database.
func (l *LAPI) Cscli(tb testing.TB, args ...string) string {
	tb.Helper()
	return l.run(tb, args...)
}

// AddDecision runs `cscli decisions add` with args, for example
// "--ip", "192.0.2.1", "--duration", "4h", "--type", "ban". Its origin is
// "cscli".
func (l *LAPI) AddDecision(tb testing.TB, args ...string) {
	tb.Helper()
	l.run(tb, append([]string{"decisions", "add"}, args...)...)
}

// DeleteDecisions runs `cscli decisions delete` with args, for example
// "--ip", "192.0.2.1", or "--all".
func (l *LAPI) DeleteDecisions(tb testing.TB, args ...string) {
	tb.Helper()
	l.run(tb, append([]string{"decisions", "delete"}, args...)...)
}

// ImportRow is one decision for Import. Empty fields take the defaults
// noted.
//
// CrowdSec 1.4.6 imports every row with scope Ip whatever the scope column
// says: a CIDR value arrives as scope Ip with the CIDR as value (LAPI still
// matches it as a range). Use AddDecision with --range for a true Range
// decision.
type ImportRow struct {
	Value    string // an address or a CIDR
	Scope    string // "ip" (default); see above
	Type     string // "ban" (default)
	Duration string // "4h" (default)
	Reason   string // the decision's scenario; "lapitest" (default)
}

// Import loads rows with `cscli decisions import`, the bulk path (CrowdSec
// 1.4.6 loads 100k decisions in 5 to 10 s). Their origin is
// "cscli-import": 1.4.6 ignores an origin column.
func (l *LAPI) Import(tb testing.TB, rows []ImportRow) {
	tb.Helper()
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write([]string{"duration", "reason", "scope", "type", "value"})
	for _, r := range rows {
		_ = w.Write([]string{
			or(r.Duration, "4h"), or(r.Reason, "lapitest"), or(r.Scope, "ip"), or(r.Type, "ban"), r.Value,
		})
	}
	w.Flush()
	f, err := os.CreateTemp(l.dir, "import-*.csv")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b.Bytes()); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	l.ImportFile(tb, f.Name())
}

// ImportFile runs `cscli decisions import -i path`: a CSV file with a
// header naming any of duration, reason, scope, type, value, or a JSON
// array of objects with those keys.
func (l *LAPI) ImportFile(tb testing.TB, path string) {
	tb.Helper()
	out := l.runAll(tb, "decisions", "import", "-i", path)
	if !strings.Contains(out, "successfully imported") {
		tb.Fatalf("lapitest: cscli decisions import -i %s: no success reported:\n%s", path, out)
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// run runs cscli and returns its standard output.
func (l *LAPI) run(tb testing.TB, args ...string) string {
	tb.Helper()
	stdout, _ := l.exec(tb, args...)
	return stdout
}

// runAll runs cscli and returns its standard output and error together:
// cscli reports some results only in its log.
func (l *LAPI) runAll(tb testing.TB, args ...string) string {
	tb.Helper()
	stdout, stderr := l.exec(tb, args...)
	return stdout + stderr
}

func (l *LAPI) exec(tb testing.TB, args ...string) (string, string) {
	tb.Helper()
	var stdout, stderr bytes.Buffer
	cmd := l.command(l.cscli, append([]string{"-c", l.ConfigPath()}, args...)...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.Dir = l.dir
	if err := cmd.Run(); err != nil {
		tb.Fatalf("lapitest: cscli %s: %v\n%s%s\ncrowdsec log (running: %v):\n%s",
			strings.Join(args, " "), err, stdout.String(), stderr.String(), l.Running(), l.logTail())
	}
	return stdout.String(), stderr.String()
}

// start starts crowdsec and waits until it answers HTTP.
func (l *LAPI) start() error {
	logf, err := os.OpenFile(l.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child holds its own descriptor
	fmt.Fprintf(logf, "--- lapitest: starting crowdsec on %s at %s\n", l.Addr(), time.Now().Format(time.RFC3339Nano))

	cmd := l.command(l.crowdsec, "-c", l.ConfigPath(), "-no-cs")
	cmd.Dir = l.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// crowdsec dies with the test binary, even when a test timeout
		// ends it before the cleanups run.
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
	begin := time.Now()
	if err := testutil.Start(cmd); err != nil {
		return fmt.Errorf("start crowdsec: %w", err)
	}
	done := make(chan struct{})
	l.mu.Lock()
	l.cmd, l.done, l.exitErr = cmd, done, nil
	l.mu.Unlock()
	go func() {
		err := cmd.Wait()
		l.mu.Lock()
		l.exitErr = err
		l.mu.Unlock()
		close(done)
	}()

	client := l.HTTPClient()
	deadline := time.Now().Add(startTimeout)
	for {
		// Any HTTP answer, even 403 for the missing key, means the API
		// server is serving.
		resp, err := client.Get(l.URL() + "v1/decisions")
		if err == nil {
			resp.Body.Close()
			l.mu.Lock()
			l.startup = time.Since(begin)
			l.mu.Unlock()
			return nil
		}
		select {
		case <-done:
			l.mu.Lock()
			defer l.mu.Unlock()
			l.cmd = nil
			return fmt.Errorf("crowdsec exited before answering on %s: %v", l.Addr(), l.exitErr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			l.kill()
			return fmt.Errorf("crowdsec did not answer on %s within %v: %w", l.Addr(), startTimeout, err)
		}
	}
}

func (l *LAPI) stop(tb testing.TB) {
	tb.Helper()
	l.mu.Lock()
	cmd, done := l.cmd, l.done
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		tb.Logf("lapitest: crowdsec did not stop within %v, killing it", stopTimeout)
		l.kill()
	}
	l.mu.Lock()
	l.cmd = nil
	l.mu.Unlock()
}

// kill kills crowdsec's process group (it was started as its leader) and
// waits for crowdsec.
func (l *LAPI) kill() {
	l.mu.Lock()
	cmd, done := l.cmd, l.done
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// logTail returns the end of crowdsec's log.
func (l *LAPI) logTail() string {
	b, err := os.ReadFile(l.LogPath())
	if err != nil {
		return fmt.Sprintf("(no crowdsec log: %v)", err)
	}
	const max = 4096
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

func (l *LAPI) rewriteCredentialsURL(tb testing.TB) {
	tb.Helper()
	b, err := os.ReadFile(l.credentialsPath())
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "url:") {
			line = "url: " + l.URL()
		}
		out = append(out, line)
	}
	write(tb, l.credentialsPath(), strings.Join(out, "\n"))
}

func write(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// HTTPClient returns a client that reaches the LAPI, dialing from inside
// its network namespace when it has one.
func (l *LAPI) HTTPClient() *http.Client {
	if l.netns == "" {
		return &http.Client{Timeout: time.Second}
	}
	return testutil.HTTPClientIn(l.netns)
}

// command runs name in the LAPI's network namespace.
func (l *LAPI) command(name string, args ...string) *exec.Cmd {
	if l.netns == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", l.netns, name}, args...)...)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (l *LAPI) config() string {
	return fmt.Sprintf(configTemplate, l.dir, l.Addr())
}

// configTemplate is the smallest configuration 1.4.6 runs the LAPI with:
// no online_client (no CAPI), no prometheus listener (port 6060 would
// collide between instances), logs on stdout, everything under one
// directory. %[1]s is that directory, %[2]s the listen address.
const configTemplate = `common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: .
config_paths:
  config_dir: %[1]s/etc/
  data_dir: %[1]s/data/
  simulation_path: %[1]s/etc/simulation.yaml
  hub_dir: %[1]s/hub/
  index_path: %[1]s/hub/.index.json
  notification_dir: %[1]s/etc/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
cscli:
  output: human
  color: "no"
db_config:
  log_level: info
  type: sqlite
  db_path: %[1]s/data/crowdsec.db
  use_wal: true
api:
  client:
    insecure_skip_verify: false
    credentials_path: %[1]s/etc/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: %[2]s
    profiles_path: %[1]s/etc/profiles.yaml
    trusted_ips:
      - 127.0.0.1
      - ::1
prometheus:
  enabled: false
`

// profiles is Debian's default profile: an alert without decisions on an
// IP gets a 4h ban. Decisions added with cscli carry their own.
const profiles = `name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: 4h
on_success: break
`
