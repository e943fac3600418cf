package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// runPlain is the baseline daemon: the same request loop without the
// library. It binds addr itself (SO_REUSEADDR, and SO_REUSEPORT if asked),
// reports "ready <addr> <unix ns>" on report, and on SIGTERM closes its
// listener, reports "closed <unix ns>", answers what it accepted and exits.
func runPlain(ctx context.Context, addr string, reusePort bool, report *os.File) error {
	defer report.Close()
	ln, err := listenPlain(ctx, addr, reusePort)
	if err != nil {
		return err
	}
	var srv server
	srv.start(ln)
	if _, err := fmt.Fprintf(report, "ready %s %d\n", ln.Addr(), time.Now().UnixNano()); err != nil {
		err = errors.Join(fmt.Errorf("report: %w", err), srv.stopAccepting())
		srv.wait()
		return err
	}
	<-ctx.Done()
	err = srv.stopAccepting()
	closed := time.Now()
	srv.wait()
	if _, rerr := fmt.Fprintf(report, "closed %d\n", closed.UnixNano()); rerr != nil {
		err = errors.Join(err, fmt.Errorf("report: %w", rerr))
	}
	return err
}

// listenPlain binds addr as the baseline daemons do: SO_REUSEADDR, and
// SO_REUSEPORT if asked.
func listenPlain(ctx context.Context, addr string, reusePort bool) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		if cerr := rc.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if err == nil && reusePort {
				err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		}); cerr != nil {
			return cerr
		}
		return err
	}}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return ln, nil
}

// plainProc is a running baseline daemon, seen from the bench.
type plainProc struct {
	cmd    *exec.Cmd
	report *os.File // read end of the daemon's report pipe
	br     *bufio.Reader
	done   chan struct{} // closed when Wait returned
	err    error         // Wait's result, set before done closes
}

// Bounds of the baseline process steps.
const (
	plainStartTimeout = 30 * time.Second
	plainStopTimeout  = 30 * time.Second
)

// startPlainRole starts a baseline daemon in role (rolePlain, or
// roleHTTPPlain for the keep-alive mode) binding addr and waits until it
// listens; it returns the bound address and when the daemon bound it.
func startPlainRole(self, role, addr string, reusePort bool, logf *os.File) (*plainProc, string, time.Time, error) {
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, "", time.Time{}, fmt.Errorf("report pipe: %w", err)
	}
	rp := "0"
	if reusePort {
		rp = "1"
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envRole+"="+role, envAddr+"="+addr, envReusePort+"="+rp)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{wr}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a terminal's Ctrl-C reaches only the bench
	err = cmd.Start()
	wr.Close()
	if err != nil {
		rd.Close()
		return nil, "", time.Time{}, fmt.Errorf("start baseline daemon: %w", err)
	}
	p := &plainProc{cmd: cmd, report: rd, br: bufio.NewReader(rd), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	f, err := p.readReport("ready", 2, plainStartTimeout)
	if err != nil {
		p.kill()
		return nil, "", time.Time{}, fmt.Errorf("baseline daemon pid %d did not start: %w", cmd.Process.Pid, err)
	}
	at, err := unixNS(f[1])
	if err != nil {
		p.kill()
		return nil, "", time.Time{}, err
	}
	return p, f[0], at, nil
}

// readReport reads the next report line, which must be word followed by n fields.
func (p *plainProc) readReport(word string, n int, timeout time.Duration) ([]string, error) {
	if err := p.report.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("report pipe: %w", err)
	}
	line, err := p.br.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("waiting for %q on the report pipe: %w", word, err)
	}
	f := strings.Fields(line)
	if len(f) != n+1 || f[0] != word {
		return nil, fmt.Errorf("report %q, want %q and %d fields", strings.TrimSpace(line), word, n)
	}
	return f[1:], nil
}

// stop sends SIGTERM, waits for the daemon to close its listener and exit,
// and returns when it closed the listener.
func (p *plainProc) stop() (time.Time, error) {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.kill()
		return time.Time{}, fmt.Errorf("baseline daemon pid %d: %w", p.cmd.Process.Pid, err)
	}
	f, err := p.readReport("closed", 1, plainStopTimeout)
	if err != nil {
		p.kill()
		return time.Time{}, fmt.Errorf("baseline daemon pid %d did not stop: %w", p.cmd.Process.Pid, err)
	}
	at, err := unixNS(f[0])
	t := time.NewTimer(plainStopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.kill()
		return at, fmt.Errorf("baseline daemon pid %d did not exit after closing its listener", p.cmd.Process.Pid)
	}
	p.report.Close()
	if p.err != nil {
		return at, fmt.Errorf("baseline daemon pid %d: %w", p.cmd.Process.Pid, p.err)
	}
	return at, err
}

// kill kills the daemon and reaps it.
func (p *plainProc) kill() {
	p.cmd.Process.Kill()
	<-p.done
	p.report.Close()
}

func unixNS(s string) (time.Time, error) {
	ns, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad timestamp %q: %w", s, err)
	}
	return time.Unix(0, ns), nil
}
