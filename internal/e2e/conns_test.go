package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// idleConn is one keep-alive client connection written by hand: every
// request goes on the same TCP connection, so a reconnect cannot hide.
type idleConn struct {
	c    net.Conn
	br   *bufio.Reader
	port int // the client's port, fixed when it was opened
}

// dialIdle opens a connection to addr and answers one GET on it, so that
// it stands idle at a request boundary.
func dialIdle(addr string) (*idleConn, error) {
	c, err := net.DialTimeout("tcp", addr, dialTimeout)
	if err != nil {
		return nil, err
	}
	k := &idleConn{c: c, br: bufio.NewReaderSize(c, 1024), port: c.LocalAddr().(*net.TCPAddr).Port}
	if _, err := k.get("/healthz"); err != nil {
		c.Close()
		return nil, err
	}
	return k, nil
}

// get sends GET path on the connection and reads the answer, which must
// be a 2xx that keeps the connection open.
func (k *idleConn) get(path string) ([]byte, error) {
	k.c.SetDeadline(time.Now().Add(requestTimeout))
	defer k.c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(k.c, "GET %s HTTP/1.1\r\nHost: kvd\r\n\r\n", path); err != nil {
		return nil, fmt.Errorf("GET %s on port %d: write: %w", path, k.port, err)
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s on the same connection (port %d): %w", path, k.port, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("GET %s on port %d: body: %w", path, k.port, err)
	}
	if resp.StatusCode/100 != 2 {
		return body, fmt.Errorf("GET %s on port %d: %s", path, k.port, resp.Status)
	}
	if resp.Close {
		return body, fmt.Errorf("GET %s on port %d: the answer closes the connection (Connection: close)", path, k.port)
	}
	return body, nil
}

// servedBy sends GET /stats and returns the pid of the kvd that answered.
func (k *idleConn) servedBy() (int, error) {
	body, err := k.get("/stats")
	if err != nil {
		return 0, err
	}
	var st struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return 0, fmt.Errorf("GET /stats on port %d: %w", k.port, err)
	}
	return st.PID, nil
}

// idleFor waits d on the idle connection without sending anything: a read
// that must time out. It returns an error, saying after how long, if the
// server closed the connection (or sent anything) meanwhile.
func (k *idleConn) idleFor(d time.Duration) error {
	start := time.Now()
	k.c.SetReadDeadline(start.Add(d))
	defer k.c.SetReadDeadline(time.Time{})
	_, err := k.br.Peek(1)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	if err == nil {
		return fmt.Errorf("port %d: the server sent something unasked after %v idle", k.port, time.Since(start).Round(time.Millisecond))
	}
	return fmt.Errorf("port %d: the connection ended after %v idle: %w", k.port, time.Since(start).Round(time.Millisecond), err)
}

func (k *idleConn) close() { k.c.Close() }

// connWorkers open and check connections concurrently.
var connWorkers = max(16, 8*runtime.GOMAXPROCS(0))

// openIdle opens n idle connections to addr. Each is closed when the test
// ends.
func openIdle(t *testing.T, addr string, n int) []*idleConn {
	t.Helper()
	conns := make([]*idleConn, n)
	t.Cleanup(func() {
		for _, k := range conns {
			if k != nil {
				k.close()
			}
		}
	})
	errs := forEach(n, func(i int) error {
		k, err := dialIdle(addr)
		conns[i] = k
		return err
	})
	if len(errs) > 0 {
		t.Fatalf("opening %d idle connections: %d failed, e.g. %v", n, len(errs), errs[0])
	}
	return conns
}

// checkSameConns sends GET /stats on every connection and fails the test
// unless each answers on the same connection, from the daemon pid.
func checkSameConns(t *testing.T, conns []*idleConn, pid int) {
	t.Helper()
	errs := forEach(len(conns), func(i int) error {
		k := conns[i]
		if got := k.c.LocalAddr().(*net.TCPAddr).Port; got != k.port {
			return fmt.Errorf("connection %d: client port %d, opened on %d", i, got, k.port)
		}
		served, err := k.servedBy()
		if err != nil {
			return err
		}
		if served != pid {
			return fmt.Errorf("port %d: answered by pid %d, the serving kvd is %d", k.port, served, pid)
		}
		return nil
	})
	if len(errs) > 0 {
		for _, err := range errs[:min(len(errs), 5)] {
			t.Error(err)
		}
		t.Fatalf("%d of %d connections did not answer on the same connection", len(errs), len(conns))
	}
}

// forEach runs fn(0..n-1) on connWorkers goroutines and returns the
// errors.
func forEach(n int, fn func(i int) error) []error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	next := make(chan int)
	for range min(connWorkers, n) {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return errs
}

// fdBudget is what the processes need besides the connections: the
// supervisor and each kvd keep 256 descriptors free before they take
// passed ones (supervisor/conns.go, handoff.ConnRoom) and hold a few
// dozen of their own; this test process its pipes, the runtime's and the
// trigger connections.
const fdBudget = 512

// raiseNoFile raises this process's soft RLIMIT_NOFILE to its hard limit
// (with syscall.Setrlimit, so that the supervisor and its daemons, started
// from here, inherit it) and returns how many connections fit in each
// process: the test holds the client ends; the supervisor its copies of
// the passed ones while a handoff runs; the incumbent and the successor
// the server ends. RLIMIT_NOFILE bounds each process on its own; the
// system-wide bound (fs.file-max) must hold all four.
func raiseNoFile(t *testing.T) (perProcess int, lim syscall.Rlimit) {
	t.Helper()
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// Go raised this process's soft limit at its start already, but
	// gives the processes it starts the soft limit it was started with,
	// unless the program sets the limit itself: set it even when it is
	// at the hard limit.
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raise RLIMIT_NOFILE to %d: %v", lim.Max, err)
	}
	perProcess = int(min(lim.Cur, 1<<30)) - fdBudget
	if sys := systemFDRoom(); sys >= 0 {
		perProcess = min(perProcess, (sys-fdBudget)/4)
	}
	if ports := ephemeralPorts(); ports >= 0 {
		// Every client connection takes a local port of the range.
		perProcess = min(perProcess, ports-fdBudget)
	}
	return max(perProcess, 0), lim
}

// systemFDRoom is how many more files the system can open (fs.file-nr:
// allocated, unused, maximum), or -1 if unknown.
func systemFDRoom() int {
	b, err := os.ReadFile("/proc/sys/fs/file-nr")
	if err != nil {
		return -1
	}
	var alloc, unused, maxFiles int64
	if _, err := fmt.Sscan(string(b), &alloc, &unused, &maxFiles); err != nil {
		return -1
	}
	return int(min(max(maxFiles-alloc, 0), 1<<30))
}

// ephemeralPorts is the size of the local port range (net.ipv4.ip_local_port_range),
// or -1 if unknown.
func ephemeralPorts() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return -1
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || hi < lo {
		return -1
	}
	return hi - lo + 1
}
