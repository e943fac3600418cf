package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdutil"
	"github.com/handoff-go/handoff/internal/peercred"
	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/wire"
)

// Supervisor holds the listening sockets (it never accepts on them), starts
// the daemon, drives handoffs and reaps every child it starts. Its methods
// are safe for concurrent use; one handoff runs at a time.
type Supervisor struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	listeners []namedFD // our own close-on-exec duplicates
	inc       *child    // the serving daemon
	succ      *child    // the successor of the running handoff
	phase     Phase
	handoffID HandoffID
	busy      bool // a handoff, cold start or resume is running
	busyStop  context.CancelFunc
	busyDone  chan struct{} // closed by end
	stopping  bool
	outcomes  []Outcome
	handoffs  int
	closed    bool
	// held are connections an incumbent passed before it died during a
	// handoff: the next cold start gets them.
	held heldConns

	exits chan IncumbentExit
}

type namedFD struct {
	name string
	fd   int
}

// NamedFile is a descriptor with its listener name.
type NamedFile struct {
	Name string
	File *os.File
}

const keepOutcomes = 10

// New checks cfg and returns a supervisor with no listeners.
func New(cfg Config) (*Supervisor, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Supervisor{cfg: cfg, log: cfg.Logger, phase: PhaseIdle, exits: make(chan IncumbentExit, 16)}, nil
}

// AddListener keeps a duplicate of l (TCP or unix stream) to pass to every
// daemon as name. l stays the caller's; a unix listener is set not to
// unlink its path on Close, since the path must outlive any one holder.
func (s *Supervisor) AddListener(name string, l net.Listener) error {
	sc, ok := l.(syscall.Conn)
	if !ok {
		return fmt.Errorf("handoff: listener %q (%T) has no file descriptor", name, l)
	}
	if ul, ok := l.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	return s.addConn(name, sc)
}

// AddPacketConn keeps a duplicate of c (UDP or unixgram) to pass as name.
func (s *Supervisor) AddPacketConn(name string, c net.PacketConn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return fmt.Errorf("handoff: packet conn %q (%T) has no file descriptor", name, c)
	}
	return s.addConn(name, sc)
}

// AddFile keeps a duplicate of f to pass as name.
func (s *Supervisor) AddFile(name string, f *os.File) error {
	return s.addConn(name, f)
}

func (s *Supervisor) addConn(name string, sc syscall.Conn) error {
	if err := validName(name); err != nil {
		return err
	}
	fd, err := fdutil.Dup(sc)
	if err != nil {
		return fmt.Errorf("handoff: listener %q: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		unix.Close(fd)
		return ErrClosed
	}
	for _, l := range s.listeners {
		if l.name == name {
			unix.Close(fd)
			return fmt.Errorf("handoff: listener %q added twice", name)
		}
	}
	s.listeners = append(s.listeners, namedFD{name, fd})
	return nil
}

func validName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("handoff: listener name %q must be 1 to 255 characters", name)
	}
	for _, r := range name {
		if r == ':' || r < ' ' || r > '~' {
			return fmt.Errorf("handoff: listener name %q may hold only printable ASCII other than ':'", name)
		}
	}
	return nil
}

// ListenerFiles returns duplicates of the listeners in order; the caller
// closes them.
func (s *Supervisor) ListenerFiles() ([]NamedFile, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []NamedFile
	for _, l := range s.listeners {
		nfd, err := unix.FcntlInt(uintptr(l.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			for _, f := range out {
				f.File.Close()
			}
			return nil, fmt.Errorf("handoff: dup listener %q: %w", l.name, err)
		}
		out = append(out, NamedFile{l.name, os.NewFile(uintptr(nfd), l.name)})
	}
	return out, nil
}

func (s *Supervisor) listenerFDs() (names []string, fds []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		names, fds = append(names, l.name), append(fds, l.fd)
	}
	return names, fds
}

// IncumbentExits delivers the serving daemon's exits that no commit caused
// (a crash, a kill, a failed resume). The daemon is already reaped; start
// the known-good binary again with ColdStart.
func (s *Supervisor) IncumbentExits() <-chan IncumbentExit { return s.exits }

// Status returns a snapshot for status commands.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Phase: s.phase, HandoffID: s.handoffID, Handoffs: s.handoffs, LastOutcomes: slices.Clone(s.outcomes)}
	if c := s.inc; c != nil && !c.exited() {
		st.IncumbentPID, st.IncumbentBinary, st.IncumbentBuildID, st.IncumbentSince = c.pid, c.spec.Binary, c.buildID, c.started
	}
	if c := s.succ; c != nil && !c.exited() {
		st.SuccessorPID, st.SuccessorBuildID = c.pid, c.buildID
	}
	for _, l := range s.listeners {
		st.Listeners = append(st.Listeners, l.name)
	}
	return st
}

func (s *Supervisor) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if s.cfg.OnEvent != nil {
		s.cfg.OnEvent(e)
	}
}

func (s *Supervisor) setPhase(id HandoffID, p Phase) {
	s.mu.Lock()
	s.phase = p
	if p == PhaseIdle {
		s.handoffID = ""
	} else {
		s.handoffID = id
	}
	s.mu.Unlock()
	s.emit(Event{Kind: EventPhase, HandoffID: id, Phase: p})
}

// onExit runs on a child's waiter goroutine after it was reaped.
func (s *Supervisor) onExit(c *child) {
	s.mu.Lock()
	report := s.inc == c && !s.busy && !s.stopping
	s.mu.Unlock()
	if report {
		s.reportExit(c)
	}
}

// reportExit delivers c's exit once.
func (s *Supervisor) reportExit(c *child) {
	c.once.Do(func() {
		ex := IncumbentExit{PID: c.pid, Binary: c.spec.Binary, State: c.state, Time: time.Now(), Running: time.Since(c.started)}
		s.log.Warn("handoff: the serving daemon exited", "pid", c.pid, "binary", c.spec.Binary, "state", fmt.Sprint(c.state))
		s.emit(Event{Kind: EventIncumbentExited, PID: c.pid, Exit: &ex})
		select {
		case s.exits <- ex:
		default:
			s.log.Error("handoff: exit notification dropped (nobody reads IncumbentExits)", "pid", c.pid)
		}
	})
}

// begin marks the supervisor busy and returns ctx, which Close cancels;
// end clears it and reports an incumbent that died meanwhile.
func (s *Supervisor) begin(ctx context.Context) (context.Context, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.busy {
		return nil, fmt.Errorf("%w (phase %s)", ErrHandoffInProgress, s.phase)
	}
	s.busy = true
	ctx, s.busyStop = context.WithCancel(ctx)
	s.busyDone = make(chan struct{})
	return ctx, nil
}

func (s *Supervisor) end() {
	s.mu.Lock()
	s.busy = false
	s.busyStop()
	close(s.busyDone)
	c := s.inc
	report := c != nil && c.exited() && !s.stopping
	s.mu.Unlock()
	if report {
		s.reportExit(c)
	}
}

// ColdStart starts spec's binary with the listeners (no successor role) and
// returns once it answers Hello on the control socket, within
// StartTimeout. It fails if a daemon is already serving. The supervisor
// reaps the process: do not Wait on it.
func (s *Supervisor) ColdStart(ctx context.Context, spec SpawnSpec) (int, error) {
	if err := spec.validate(); err != nil {
		return 0, err
	}
	ctx, err := s.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer s.end()
	s.mu.Lock()
	if s.inc != nil && !s.inc.exited() {
		pid := s.inc.pid
		s.mu.Unlock()
		return 0, fmt.Errorf("handoff: cold start refused: pid %d is serving", pid)
	}
	s.stopping = false
	s.mu.Unlock()
	names, fds := s.listenerFDs()
	connsFD, sendHeld := -1, func() {}
	s.mu.Lock()
	if s.held.count() > 0 {
		if connsFD, sendHeld, err = s.connsSocket(&s.held, s.cfg.StartTimeout); err != nil {
			s.log.Error("handoff: cannot pass the held connections to the cold start; closing them", "conns", s.held.count(), "err", err)
			s.held.close()
			connsFD, sendHeld = -1, func() {}
		}
	}
	s.mu.Unlock()
	c, err := s.spawnWith(spec, names, fds, -1, connsFD)
	if connsFD >= 0 {
		unix.Close(connsFD)
	}
	sendHeld() // after a failed spawn the peer end is closed: the send fails and closes them
	if err != nil {
		return 0, err
	}
	c.watch(s.onExit)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
	defer cancel()
	h, err := s.awaitDaemon(hctx, c)
	if err != nil {
		s.mu.Lock()
		closed := s.closed
		if closed && !c.exited() {
			// Close during the start-up: the daemon keeps running, as
			// every child does, and is recorded as the incumbent (in the
			// journal too, so a new supervisor's ResumeFromJournal finds
			// and adopts it).
			s.inc = c
		}
		s.mu.Unlock()
		if closed {
			if !c.exited() {
				if jerr := writeJournal(s.cfg.Journal, s.idleRecord()); jerr != nil {
					s.log.Error("handoff: journal write failed", "err", jerr)
				}
				s.log.Warn("handoff: closed during a cold start; the daemon keeps running unsupervised", "pid", c.pid, "binary", spec.Binary)
			}
			return 0, fmt.Errorf("%w: cold start of %s (pid %d) interrupted before it answered Hello (%v)", ErrClosed, spec.Binary, c.pid, err)
		}
		c.killAndReap(0)
		return 0, fmt.Errorf("handoff: cold start of %s: %w", spec.Binary, err)
	}
	c.buildID = h.BuildID
	s.mu.Lock()
	s.inc = c
	s.mu.Unlock()
	if err := writeJournal(s.cfg.Journal, s.idleRecord()); err != nil {
		s.log.Error("handoff: journal write failed", "err", err)
	}
	s.log.Info("handoff: daemon started", "pid", c.pid, "binary", spec.Binary, "build_id", h.BuildID)
	s.emit(Event{Kind: EventColdStarted, PID: c.pid})
	return c.pid, nil
}

// awaitDaemon waits until c answers Hello on the control socket.
func (s *Supervisor) awaitDaemon(ctx context.Context, c *child) (wire.Hello, error) {
	backoff := time.Millisecond
	helloWait := 100 * time.Millisecond
	var last error
	for {
		conn, h, err := s.dialIncumbentWithin(ctx, helloWait)
		helloWait = min(helloWait*2, s.cfg.HelloTimeout)
		if err == nil {
			conn.Close()
			if h.PID == c.pid {
				return h, nil
			}
			err = fmt.Errorf("pid %d answers on %s, expected %d", h.PID, s.cfg.ControlSocket, c.pid)
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-c.done:
			t.Stop()
			return wire.Hello{}, fmt.Errorf("the daemon exited during start-up (%v)", c.state)
		case <-ctx.Done():
			t.Stop()
			return wire.Hello{}, fmt.Errorf("%w: the daemon did not answer on %s: %w", ErrTimeout, s.cfg.ControlSocket, last)
		case <-t.C:
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// dialIncumbent connects to the control socket and reads the daemon's Hello.
func (s *Supervisor) dialIncumbent(ctx context.Context) (*wire.Conn, wire.Hello, error) {
	return s.dialIncumbentWithin(ctx, s.cfg.HelloTimeout)
}

// dialIncumbentWithin is dialIncumbent waiting at most helloWait for Hello.
func (s *Supervisor) dialIncumbentWithin(ctx context.Context, helloWait time.Duration) (*wire.Conn, wire.Hello, error) {
	d := net.Dialer{Timeout: s.cfg.HelloTimeout}
	nc, err := d.DialContext(ctx, "unix", s.cfg.ControlSocket)
	if err != nil {
		return nil, wire.Hello{}, fmt.Errorf("handoff: connect to the incumbent: %w", err)
	}
	uc := nc.(*net.UnixConn)
	peerPID, err := peercred.CheckSameUser(uc)
	if err != nil {
		uc.Close()
		return nil, wire.Hello{}, err
	}
	conn := wire.NewConn(uc)
	// ctx ending (Close cancels it) cuts the wait for Hello short: the
	// socket is closed under the read. Recv sets its own read deadline,
	// so a deadline set here could be overwritten; a close cannot.
	stop := context.AfterFunc(ctx, func() { uc.Close() })
	f, err := conn.Recv(helloWait)
	if !stop() {
		conn.Close()
		closeFDs(f.FDs)
		return nil, wire.Hello{}, fmt.Errorf("handoff: incumbent hello: %w", context.Cause(ctx))
	}
	if err != nil {
		conn.Close()
		return nil, wire.Hello{}, fmt.Errorf("handoff: incumbent hello: %w", err)
	}
	closeFDs(f.FDs)
	h, ok := f.Msg.(wire.Hello)
	if !ok || h.Role != wire.RoleIncumbent || h.PID != peerPID {
		conn.Close()
		return nil, wire.Hello{}, wire.Violation("incumbent opened with %s (role %q, pid %d, socket peer pid %d)", f.Msg.Type(), h.Role, h.PID, peerPID)
	}
	return conn, h, nil
}

// ackHello negotiates the version with a daemon's Hello and sends HelloAck.
func (s *Supervisor) ackHello(conn *wire.Conn, h wire.Hello, id HandoffID, deadline time.Time) error {
	return s.ackHelloExpecting(conn, h, id, deadline, 0)
}

// ackHelloExpecting is ackHello telling a successor (version 3 on) about
// how many connections it may be passed.
func (s *Supervisor) ackHelloExpecting(conn *wire.Conn, h wire.Hello, id HandoffID, deadline time.Time, expectConns int) error {
	v, err := wire.Negotiate(wire.MinVersion, wire.MaxVersion, h.MinVersion, h.MaxVersion)
	if err != nil {
		conn.Send(wire.Error{Reason: err.Error()}, string(id), writeTimeout)
		return fmt.Errorf("handoff: %s pid %d: %w", h.Role, h.PID, err)
	}
	ack := wire.HelloAck{Version: v, LivenessMS: s.cfg.Liveness.Milliseconds()}
	if !deadline.IsZero() {
		ack.DeadlineMS = max(time.Until(deadline).Milliseconds(), 1)
	}
	if v >= wire.ConnsVersion {
		ack.ExpectConns = expectConns
	}
	if err := conn.Send(ack, string(id), writeTimeout); err != nil {
		return err
	}
	conn.SetVersion(v)
	return nil
}

// Adopt supervises an already-running incumbent: after an in-place re-exec
// of the supervisor (it is still our child) or after a restart (it is not;
// its exit is then watched through a pidfd). spec says what it runs.
func (s *Supervisor) Adopt(ctx context.Context, pid int, spec SpawnSpec) error {
	if err := spec.validate(); err != nil {
		return err
	}
	if pid <= 0 || !proc.Alive(pid) {
		return fmt.Errorf("handoff: adopt: pid %d is not running", pid)
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return fmt.Errorf("handoff: adopt pid %d: %w", pid, err)
	}
	// Its uptime counts from its own start, not from the adoption.
	started, ok := proc.Started(pid)
	if !ok {
		started = time.Now()
	}
	c := &child{pid: pid, proc: p, spec: spec, started: started, done: make(chan struct{}), stop: make(chan struct{})}
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HelloTimeout)
	defer cancel()
	if conn, h, err := s.dialIncumbent(hctx); err == nil {
		conn.Close()
		if h.PID != pid {
			return fmt.Errorf("handoff: adopt: pid %d answers on %s, not %d", h.PID, s.cfg.ControlSocket, pid)
		}
		c.buildID = h.BuildID
	} else {
		s.log.Warn("handoff: adopted daemon does not answer on the control socket yet", "pid", pid, "err", err)
	}
	s.mu.Lock()
	if s.inc != nil && !s.inc.exited() && s.inc.pid != pid {
		other := s.inc.pid
		s.mu.Unlock()
		return fmt.Errorf("handoff: adopt pid %d: pid %d is already serving", pid, other)
	}
	s.inc = c
	s.mu.Unlock()
	c.watch(s.onExit)
	return writeJournal(s.cfg.Journal, s.idleRecord())
}

func (s *Supervisor) idleRecord() journalRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := journalRecord{Phase: PhaseIdle}
	if c := s.inc; c != nil {
		r.IncumbentPID, r.IncumbentStart, r.IncumbentBinary, r.IncumbentArgs = c.pid, proc.StartTime(c.pid), c.spec.Binary, c.spec.Args
	}
	return r
}

// Stop asks the serving daemon to stop (SIGTERM: it drains and exits by
// itself) and waits for it; when ctx ends first it is killed. The
// supervisor keeps its listeners until Close.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopping = true
	c := s.inc
	s.mu.Unlock()
	if c == nil || c.exited() {
		return nil
	}
	unix.Kill(c.pid, unix.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
	}
	if err := c.killAndReap(0); err != nil {
		return err
	}
	return fmt.Errorf("%w: pid %d did not stop in time and was killed", ErrTimeout, c.pid)
}

// Close releases the supervisor's descriptors. Children keep running (the
// daemon outlives its supervisor). A running handoff, cold start or resume
// is cancelled first and Close waits for it, so no descriptor is closed
// while a spawn may be passing it on: a handoff rolls back (its successor
// is killed and reaped, the incumbent resumes and keeps running); a cold
// start returns an error matching ErrClosed and its daemon, started but
// not yet confirmed, keeps running and is recorded in the journal as the
// incumbent (unless it had already exited); a resume returns an error
// wrapping context.Canceled and leaves the processes it found as they are.
//
// Close must not be called from Config.OnEvent (see there).
func (s *Supervisor) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.busy {
		stop, done := s.busyStop, s.busyDone
		s.mu.Unlock()
		stop()
		<-done
		s.mu.Lock()
	}
	for _, l := range s.listeners {
		unix.Close(l.fd)
	}
	s.listeners = nil
	s.held.close()
	for _, c := range []*child{s.inc, s.succ} {
		if c != nil {
			select {
			case <-c.stop:
			default:
				close(c.stop)
			}
		}
	}
	return nil
}

var errNoJournal = errors.New("handoff: no journal configured")
