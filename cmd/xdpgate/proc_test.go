package main

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/testutil"
)

// agentProc is an agent process: the test binary re-executed as xdpgate
// (see TestMain) inside a namespace, its log kept for the test to read.
type agentProc struct {
	t    testing.TB
	name string

	mu   sync.Mutex
	cmd  *exec.Cmd
	log  *testutil.Log
	done chan struct{}
}

// start runs `xdpgate run -c config` in ns and waits until the agent has
// applied its first decision set.
func (p *agentProc) start(ns *testutil.NetNS, config string) {
	p.t.Helper()
	self, err := os.Executable()
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := ns.Enter(self, "run", "-c", config)
	cmd.Env = append(os.Environ(), "XDPGATE_AS_MAIN=1")
	log := &testutil.Log{}
	cmd.Stdout, cmd.Stderr = log, log
	// The agent dies with the test process (testutil.Start keeps the
	// forking thread alive for that).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := testutil.Start(cmd); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.mu.Lock()
	p.cmd, p.log, p.done = cmd, log, done
	p.mu.Unlock()
	testutil.WaitFor(p.t, 30*time.Second, p.name+" to apply its first decision set", func() bool {
		select {
		case <-done:
			p.t.Fatalf("%s exited:\n%s", p.name, log)
		default:
		}
		return strings.Contains(log.String(), "decisions applied")
	})
}

// logText returns what the agent logged so far.
func (p *agentProc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.log == nil {
		return ""
	}
	return p.log.String()
}

// exited returns a channel closed when the running agent exits.
func (p *agentProc) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// pid returns the running agent's process id.
func (p *agentProc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// stop sends SIGTERM and waits for a clean exit.
func (p *agentProc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		p.t.Errorf("%s did not exit on SIGTERM:\n%s", p.name, p.logText())
	}
	if p.t.Failed() {
		p.t.Logf("%s log:\n%s", p.name, p.logText())
	}
}
