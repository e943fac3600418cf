package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proc"
)

// TestNoDescriptorLeakAfterPassingHandoffs sizes.
const (
	leakConns    = 1000
	leakHandoffs = 100
	// settleTimeout bounds the wait for the descriptors a finished
	// handoff may still hold for a moment (see settledFDs).
	settleTimeout = 5 * time.Second
)

// TestNoDescriptorLeakAfterPassingHandoffs: 1,000 idle keep-alive
// connections through 100 handoffs, each passing all of them; afterwards
// the supervisor, the serving kvd and this process hold no more
// descriptors than after the first handoff, and every connection answers
// on the same connection.
func TestNoDescriptorLeakAfterPassingHandoffs(t *testing.T) {
	needBinaries(t)
	perProcess, lim := raiseNoFile(t)
	n := leakConns
	if perProcess < n {
		t.Skipf("%d connections need about %d descriptors in each process; RLIMIT_NOFILE is %d (hard %d)", n, n+fdBudget, lim.Cur, lim.Max)
	}
	s := startSupervisor(t, supOptions{})
	conns := openIdle(t, s.addr, n)
	supPID := s.status().Supervisor.PID

	var base fdCounts
	var gaps []time.Duration
	start := time.Now()
	for h := range leakHandoffs {
		prev := s.incumbentPID()
		o := s.mustCommit(fmt.Sprintf("handoff %d", h+1))
		if p := s.passedConns(o.id); p != n {
			t.Fatalf("handoff %d (%s) passed %d connections, want %d", h+1, o.id, p, n)
		}
		gaps = append(gaps, o.acceptGap)
		// The replaced kvd exits once the successor serves.
		waitExit(t, prev, exitTimeout)
		if h == 0 {
			base = settledFDs(t, supPID, o.pid)
			t.Logf("after the first handoff: supervisor %d, kvd %d, test %d descriptors", base.sup.n(), base.kvd.n(), base.self.n())
		}
		if h == leakHandoffs-1 {
			end := settledFDs(t, supPID, o.pid)
			t.Logf("after handoff %d: supervisor %d, kvd %d, test %d descriptors", h+1, end.sup.n(), end.kvd.n(), end.self.n())
			end.compare(t, base)

			checkSameConns(t, conns, o.pid)
		}
	}
	took := time.Since(start)
	t.Logf("%d handoffs passing %d connections each in %v (%v each); accept gap %s",
		leakHandoffs, n, took.Round(time.Millisecond), (took / leakHandoffs).Round(time.Millisecond), summarize(gaps))
	for _, k := range conns {
		k.close()
	}
	s.mustStop()
}

// fdSet is one process's open descriptors: number → what it refers to
// (readlink of /proc/PID/fd/N: "socket:[ino]", "pipe:[ino]", a path).
type fdSet map[int]string

func (s fdSet) n() int { return len(s) }

// kinds counts the descriptors by kind: "socket", "pipe",
// "anon_inode:[eventpoll]", or a path.
func (s fdSet) kinds() map[string]int {
	m := map[string]int{}
	for _, target := range s {
		kind, _, _ := strings.Cut(target, ":[")
		if strings.HasPrefix(target, "anon_inode:") {
			kind = target
		}
		m[kind]++
	}
	return m
}

func readFDs(pid int) (fdSet, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	s := fdSet{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed since the listing
		}
		s[fd] = target
	}
	if pid == os.Getpid() {
		// The listing's own descriptor, closed again.
		for fd, target := range s {
			if target == dir || strings.HasSuffix(target, "/"+strconv.Itoa(pid)+"/fd") {
				delete(s, fd)
			}
		}
	}
	return s, nil
}

// fdCounts are the descriptors of the three processes at one moment.
type fdCounts struct {
	sup, kvd, self fdSet
}

func readCounts(t *testing.T, supPID, kvdPID int) fdCounts {
	t.Helper()
	var c fdCounts
	var err error
	if c.sup, err = readFDs(supPID); err != nil {
		t.Fatalf("the supervisor's descriptors: %v", err)
	}
	if c.kvd, err = readFDs(kvdPID); err != nil {
		t.Fatalf("kvd's descriptors: %v", err)
	}
	if c.self, err = readFDs(os.Getpid()); err != nil {
		t.Fatalf("this process's descriptors: %v", err)
	}
	return c
}

// settledFDs reads the descriptors once the finished handoff has let go
// of what it held. With the replaced kvd exited and the trigger answer
// read to its end, the supervisor may still hold, for a moment, these and
// nothing else of the handoff (nor does any of the three processes):
//   - its end of a trigger connection (the one that asked, or a status
//     since): it closes it once it has read our end's close (within
//     200 ms). A connection accepted on its only unix listener, the
//     trigger socket;
//   - the pidfd of the replaced daemon, closed once it has reaped that
//     process (its exit is what we waited for);
//   - the datagram socket of an sd_notify message (NOTIFY_SOCKET), open
//     only while it sends: an unbound unix datagram socket;
//   - a socket closed between the listing and the look-up of its inode.
//
// Each is recognised exactly, and the counts are read once the supervisor
// holds none, for at most settleTimeout. Every other descriptor counts.
func settledFDs(t *testing.T, supPID, kvdPID int) fdCounts {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for {
		c := readCounts(t, supPID, kvdPID)
		transient := transientFDs(supPID, c.sup)
		if len(transient) == 0 {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("the supervisor still holds %v %v after the handoff", transient, settleTimeout)
		}
		time.Sleep(10 * time.Millisecond) // polling /proc: nothing to wait on
	}
}

// transientFDs lists the supervisor's descriptors that settledFDs waits
// for it to close.
func transientFDs(pid int, fds fdSet) []string {
	socks := sockets()
	listeners := map[string]bool{} // paths of its unix listeners
	for _, target := range fds {
		if u, ok := socks[socketInode(target)]; ok && u.unix && u.listening && u.path != "" {
			listeners[u.path] = true
		}
	}
	var out []string
	for fd, target := range fds {
		if target == "anon_inode:[pidfd]" {
			if p := pidfdPID(pid, fd); p != 0 && !running(p) {
				out = append(out, fmt.Sprintf("fd %d: pidfd of exited pid %d", fd, p))
			}
			continue
		}
		ino := socketInode(target)
		if ino == "" {
			continue
		}
		u, ok := socks[ino]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("fd %d: socket closed since the listing", fd))
		case u.unix && !u.listening && listeners[u.path]:
			out = append(out, fmt.Sprintf("fd %d: trigger connection", fd))
		case u.unix && u.typ == unixDgram && u.path == "":
			out = append(out, fmt.Sprintf("fd %d: sd_notify socket", fd))
		}
	}
	return out
}

// socketInode is the inode of a "socket:[ino]" target, or "".
func socketInode(target string) string {
	ino, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return ""
	}
	return strings.TrimSuffix(ino, "]")
}

// pidfdPID is the process a pidfd refers to (fdinfo "Pid:"; -1 once it
// was reaped), 0 if unknown.
func pidfdPID(pid, fd int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			p, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return 0
			}
			return p
		}
	}
	return 0
}

// running reports whether pid is a process that has not exited.
func running(pid int) bool {
	if pid <= 0 {
		return false
	}
	st, err := proc.ReadStat(pid)
	return err == nil && st.State != 'Z' && st.State != 'X'
}

// socketInfo is what /proc/net says of one socket.
type socketInfo struct {
	table     string // "unix", "tcp", "tcp6", ...
	unix      bool
	typ       string // unix: Type, "0001" stream, "0002" datagram
	path      string // unix: the bound address (an accepted connection shows its listener's)
	listening bool   // unix: a listener
}

const unixDgram = "0002"

// sockets maps inode → socket, from the tables of /proc/net.
func sockets() map[string]socketInfo {
	m := map[string]socketInfo{}
	if b, err := os.ReadFile("/proc/net/unix"); err == nil {
		// Num RefCount Protocol Flags Type St Inode [Path]
		const acceptCon = 0x10000 // __SO_ACCEPTCON in Flags: a listener
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 7 {
				continue
			}
			flags, err := strconv.ParseUint(f[3], 16, 32)
			if err != nil {
				continue
			}
			u := socketInfo{table: "unix", unix: true, typ: f[4], listening: flags&acceptCon != 0}
			if len(f) >= 8 {
				u.path = f[7]
			}
			m[f[6]] = u
		}
	}
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6", "raw", "raw6", "netlink", "packet"} {
		b, err := os.ReadFile("/proc/net/" + table)
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		if len(lines) == 0 {
			continue
		}
		col := slices.Index(strings.Fields(strings.ToLower(lines[0])), "inode")
		if table == "tcp" || table == "tcp6" || table == "udp" || table == "udp6" || table == "raw" || table == "raw6" {
			// The header names tx_queue rx_queue and tr tm->when as one
			// column each; the inode is the tenth field.
			col = 9
		}
		if col < 0 {
			continue
		}
		for _, line := range lines[1:] {
			if f := strings.Fields(line); len(f) > col {
				m[f[col]] = socketInfo{table: table}
			}
		}
	}
	return m
}

// compare fails the test if any process holds more descriptors than in
// base, naming the kinds that grew.
func (c fdCounts) compare(t *testing.T, base fdCounts) {
	t.Helper()
	for _, p := range []struct {
		name      string
		now, then fdSet
	}{{"the supervisor", c.sup, base.sup}, {"the serving kvd", c.kvd, base.kvd}, {"the test process", c.self, base.self}} {
		if p.now.n() <= p.then.n() {
			continue
		}
		now, then := p.now.kinds(), p.then.kinds()
		var grew []string
		for kind, k := range now {
			if k > then[kind] {
				grew = append(grew, fmt.Sprintf("%s %d→%d", kind, then[kind], k))
			}
		}
		slices.Sort(grew)
		t.Errorf("%s holds %d descriptors, %d after the first handoff: %s; new since: %s",
			p.name, p.now.n(), p.then.n(), strings.Join(grew, ", "), describeNew(p.now, p.then))
	}
}

// describeNew names the descriptors of now that then does not have (by
// number and target), with what /proc/net says of a socket.
func describeNew(now, then fdSet) string {
	socks := sockets()
	var out []string
	for fd, target := range now {
		if then[fd] == target {
			continue
		}
		d := fmt.Sprintf("fd %d %s", fd, target)
		if u, ok := socks[socketInode(target)]; ok {
			d += " (" + u.table
			if u.unix {
				d += fmt.Sprintf(" type %s, path %q, listening %v", u.typ, u.path, u.listening)
			}
			d += ")"
		}
		out = append(out, d)
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}

// summarize gives the median, the 90th percentile and the maximum of ds.
func summarize(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(int(q*float64(len(s))), len(s)-1)] }
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return fmt.Sprintf("median %v, p90 %v, max %v (n=%d)", r(at(0.5)), r(at(0.9)), r(s[len(s)-1]), len(s))
}

// median is the median of ds (the upper one of an even count).
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
