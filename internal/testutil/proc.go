package testutil

import (
	"bytes"
	"os/exec"
	"runtime"
	"sync"
)

// Pdeathsig fires when the thread that started the child exits, not the
// process, and Go threads do exit: a goroutine that ends locked to its
// thread, as every NetNS.Do does, takes the thread with it. Children
// asking for Pdeathsig are therefore started from one goroutine locked to
// a thread that never exits.
var (
	starterOnce sync.Once
	starter     chan func()
)

// Start starts cmd from a thread that lives as long as the test process,
// so that a SysProcAttr.Pdeathsig fires only when the test process ends.
func Start(cmd *exec.Cmd) error {
	starterOnce.Do(func() {
		starter = make(chan func())
		go func() {
			runtime.LockOSThread()
			for f := range starter {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	starter <- func() { errc <- cmd.Start() }
	return <-errc
}

// Log is a buffer a child process writes while the test reads it.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns what was written so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
