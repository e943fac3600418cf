package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/crash"
	"github.com/handoff-go/handoff/internal/fdutil"
	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/wire"
)

// peer is one daemon's session during a handoff. A reader goroutine owns
// reads and delivers frames on frames; the driver owns everything else.
type peer struct {
	name   string
	conn   *wire.Conn
	child  *child
	frames chan recvResult
	dead   error // set once the reader reported an error
}

type recvResult struct {
	f   wire.Frame
	err error
}

// run is one PerformHandoff call; its goroutine is the only one that
// changes it.
type run struct {
	s        *Supervisor
	ctx      context.Context
	id       HandoffID
	spec     SpawnSpec
	deadline time.Time
	inc      *peer
	succ     *peer
	sealed   *wire.SealComplete
	gapStart time.Time  // PrepareHandoff is sent: the accept gap starts
	ahead    chan error // the journal write journalAhead started
	// Connection passing (protocol version 3): succRoom is the room the
	// successor stated, maxConns what the incumbent may pass, wantConns
	// what its Drained said it passes (the Conns frames follow it, also
	// after the commit), held our copies of those that arrived and are
	// not yet forwarded, forwarded those the successor was sent.
	succRoom  int
	maxConns  int
	wantConns int
	held      heldConns
	forwarded int
	out       Outcome
	wg        sync.WaitGroup
	stop      chan struct{}
	read      []*peer // peers with a reader, closed by close
}

// hangUp closes p's socket, which ends its reader. The wire.Conn itself
// (with descriptors it may still hold) is closed by close, after the
// readers are joined: Close must not run beside a Recv.
func (p *peer) hangUp() {
	p.conn.UnixConn().Close()
}

func (r *run) startReader(p *peer) {
	r.read = append(r.read, p)
	p.frames = make(chan recvResult, 8)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			f, err := p.conn.Recv(0)
			select {
			case p.frames <- recvResult{f, err}:
			case <-r.stop:
				for _, fd := range f.FDs {
					unix.Close(fd)
				}
				return
			}
			if err != nil {
				return
			}
		}
	}()
}

// abortError carries a reason for a person, the kind of failure (one of
// the Err*Failed sentinels, ErrReadyRejected) and the underlying error;
// incumbentGone says the incumbent died or vanished.
type abortError struct {
	reason        string
	incumbentGone bool
	kind          error
	err           error
}

func (e *abortError) Error() string { return e.reason }

// Unwrap makes the error match ErrAborted, its kind and its cause.
func (e *abortError) Unwrap() []error {
	out := []error{ErrAborted}
	for _, err := range []error{e.kind, e.err} {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// abort builds the abort error. Errors among args are its cause as well as
// part of the reason, so that out.Err matches them with errors.Is.
func (r *run) abort(format string, args ...any) *abortError {
	var causes []error
	for _, a := range args {
		if err, ok := a.(error); ok && err != nil {
			causes = append(causes, err)
		}
	}
	ae := &abortError{reason: fmt.Sprintf(format, args...)}
	switch len(causes) {
	case 0:
	case 1:
		ae.err = causes[0]
	default:
		ae.err = errors.Join(causes...)
	}
	return ae
}

func (r *run) abortAs(kind error, format string, args ...any) *abortError {
	ae := r.abort(format, args...)
	ae.kind = kind
	return ae
}

// kindOf is the failure kind of something wrong with p.
func (r *run) kindOf(p *peer) error {
	if p == r.inc {
		return ErrIncumbentFailed
	}
	return ErrSuccessorFailed
}

// PerformHandoff replaces the serving daemon with spec's binary. It spawns
// the successor and completes its handshake before the incumbent stops
// accepting, then drains, seals, begins, checks Ready and commits.
//
// A handoff that does not commit is rolled back (the successor killed and
// reaped, the incumbent serving with its lock again) and reported with
// Committed=false and AbortReason; the error is nil then. An error means
// the handoff could not start (ErrHandoffInProgress, ErrNoIncumbent, a bad
// spec) or the incumbent failed to resume (it has exited or will; expect an
// IncumbentExits notification).
func (s *Supervisor) PerformHandoff(ctx context.Context, spec SpawnSpec) (Outcome, error) {
	if err := spec.validate(); err != nil {
		return Outcome{}, err
	}
	ctx, err := s.begin(ctx)
	if err != nil {
		return Outcome{}, err
	}
	defer s.end()
	s.mu.Lock()
	inc := s.inc
	s.mu.Unlock()
	if inc == nil || inc.exited() {
		return Outcome{}, ErrNoIncumbent
	}
	start := time.Now()
	r := &run{s: s, ctx: ctx, id: newHandoffID(), spec: spec, deadline: start.Add(spec.Deadline), stop: make(chan struct{})}
	r.out = Outcome{ID: r.id, Started: start}
	s.log.Info("handoff: starting", "id", r.id, "binary", spec.Binary, "incumbent", inc.pid)
	s.emit(Event{Kind: EventHandoffStarted, HandoffID: r.id, PID: inc.pid})

	err = r.drive(inc)
	r.out.Phases.Total = time.Since(start)
	var resumeErr error
	if err != nil {
		var ae *abortError
		if !errors.As(err, &ae) {
			ae = &abortError{reason: err.Error(), err: err}
		}
		r.out.AbortReason = ae.reason
		r.out.Err = ae
		resumeErr = r.rollback(ae)
		if !r.gapStart.IsZero() {
			// Nobody accepted from the drain until the incumbent resumed.
			r.out.Phases.AcceptGap = time.Since(r.gapStart)
		}
		r.out.Phases.Total = time.Since(start)
		s.log.Warn("handoff: rolled back", "id", r.id, "reason", ae.reason, "accept_gap", r.out.Phases.AcceptGap, "resume_err", resumeErr)
	} else {
		s.log.Info("handoff: committed", "id", r.id, "pid", r.out.PID, "build_id", r.out.BuildID,
			"accept_gap", r.out.Phases.AcceptGap, "library_overhead", r.out.Phases.LibraryOverhead)
	}
	r.close()
	if jerr := writeJournal(s.cfg.Journal, s.idleRecord()); jerr != nil {
		s.log.Error("handoff: journal write failed", "err", jerr)
	}
	s.mu.Lock()
	s.succ = nil
	s.handoffs++
	s.outcomes = append(s.outcomes, r.out)
	if len(s.outcomes) > keepOutcomes {
		s.outcomes = slices.Delete(s.outcomes, 0, len(s.outcomes)-keepOutcomes)
	}
	s.mu.Unlock()
	s.setPhase(r.id, PhaseIdle)
	out := r.out
	s.emit(Event{Kind: EventHandoffFinished, HandoffID: r.id, Outcome: &out})
	if resumeErr != nil {
		return out, resumeErr
	}
	return out, nil
}

func (r *run) close() {
	r.held.close() // empty unless the run ended without deciding: nobody serves them then
	close(r.stop)
	for _, p := range []*peer{r.inc, r.succ} {
		if p != nil {
			p.hangUp()
		}
	}
	for _, p := range r.read {
		p.hangUp()
	}
	r.wg.Wait()
	for _, p := range []*peer{r.inc, r.succ} {
		if p != nil {
			p.conn.Close()
		}
	}
	for _, p := range r.read {
		p.conn.Close()
	}
}

// journalAhead writes the journal record of phase on a goroutine of its
// own, while the successor opens, so that its fsyncs stay off the accept
// gap; journalJoin waits for it. Writing "committing" before Ready was
// checked is safe: a restarted supervisor that reads it adopts the
// successor only if the successor answers on the control socket, which it
// takes over only after its Commit; otherwise the incumbent answers and
// resumes, as for any phase before the commit.
func (r *run) journalAhead(phase Phase) {
	ch := make(chan error, 1)
	r.ahead = ch
	go func() { ch <- r.journal(phase) }()
}

// journalJoin waits for the write journalAhead started, if any; every
// other journal write comes after it.
func (r *run) journalJoin() error {
	if r.ahead == nil {
		return nil
	}
	err := <-r.ahead
	r.ahead = nil
	return err
}

func (r *run) journal(phase Phase) error {
	if r.s.cfg.Journal == "" {
		return nil
	}
	rec := r.s.idleRecord()
	rec.Phase, rec.HandoffID, rec.DeadlineUnixMS = phase, r.id, r.deadline.UnixMilli()
	if r.succ != nil {
		c := r.succ.child
		rec.SuccessorPID, rec.SuccessorStart, rec.SuccessorBinary, rec.SuccessorArgs = c.pid, proc.StartTime(c.pid), c.spec.Binary, c.spec.Args
	}
	if err := writeJournal(r.s.cfg.Journal, rec); err != nil {
		return r.abort("the supervisor could not write its journal: %v", err)
	}
	return nil
}

// drive runs the handoff up to and including the commit, one phase after
// the other. Any error is an abort to roll back.
func (r *run) drive(incChild *child) error {
	if err := r.helloIncumbent(incChild); err != nil {
		return err
	}
	if err := r.spawnSuccessor(); err != nil {
		return err
	}
	if err := r.warmUp(); err != nil {
		return err
	}
	drained, err := r.drain()
	if err != nil {
		return err
	}
	if err := r.seal(); err != nil {
		return err
	}
	ready, err := r.begin()
	if err != nil {
		return err
	}
	return r.commit(time.Duration(drained.TookNS + r.sealed.TookNS + ready.OpenTookNS))
}

// helloIncumbent opens the session with the incumbent, checks that it is
// the supervisor's incumbent and completes the handshake.
func (r *run) helloIncumbent(incChild *child) error {
	s := r.s
	t0 := time.Now()
	dctx, cancel := context.WithDeadline(r.ctx, r.deadline)
	conn, h, err := s.dialIncumbent(dctx)
	cancel()
	if err != nil && r.ctx.Err() != nil {
		return &abortError{reason: "the handoff was cancelled: " + r.ctx.Err().Error(), err: r.ctx.Err()}
	}
	if err != nil {
		return r.abortAs(ErrIncumbentFailed, "the incumbent (pid %d) did not answer on its control socket: %v", incChild.pid, err)
	}
	r.inc = &peer{name: "incumbent", conn: conn, child: incChild}
	if h.PID != incChild.pid {
		return r.abortAs(ErrIncumbentFailed, "pid %d answers on the control socket, but the supervisor's incumbent is pid %d", h.PID, incChild.pid)
	}
	s.mu.Lock() // Status reads buildID concurrently
	incChild.buildID = h.BuildID
	s.mu.Unlock()
	if err := s.ackHello(conn, h, r.id, r.deadline); err != nil {
		return r.abortAs(ErrIncumbentFailed, "handshake with the incumbent failed: %v", err)
	}
	r.out.Phases.IncumbentHello = time.Since(t0)
	r.startReader(r.inc)
	return nil
}

// spawnSuccessor starts the successor with the listeners and a socketpair,
// and finishes its handshake before anything stops accepting.
func (r *run) spawnSuccessor() error {
	r.s.setPhase(r.id, PhaseSpawning)
	t1 := time.Now()
	if err := r.startSuccessor(); err != nil {
		return err
	}
	if err := r.journal(PhaseSpawning); err != nil {
		return err
	}
	if err := r.handshakeSuccessor(); err != nil {
		return err
	}
	r.out.Phases.Spawn = time.Since(t1)
	crash.Point("supervisor-after-successor-hello")
	return nil
}

// startSuccessor spawns the successor process and makes it r.succ, its
// session on the parent's end of the socketpair.
func (r *run) startSuccessor() error {
	s := r.s
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return r.abortAs(ErrSuccessorFailed, "could not create the successor's control socketpair: %v", err)
	}
	names, fds := s.listenerFDs()
	c, err := s.spawn(r.spec, names, fds, pair[1])
	unix.Close(pair[1])
	if err != nil {
		unix.Close(pair[0])
		return r.abortAs(ErrSuccessorFailed, "could not start %s: %v", r.spec.Binary, err)
	}
	c.watch(s.onExit)
	f := os.NewFile(uintptr(pair[0]), "successor-control")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		c.killAndReap(0)
		return r.abortAs(ErrSuccessorFailed, "successor control socket: %v", err)
	}
	r.succ = &peer{name: "successor", conn: wire.NewConn(nc.(*net.UnixConn)), child: c}
	s.mu.Lock()
	s.succ = c
	s.mu.Unlock()
	return nil
}

// handshakeSuccessor takes the successor's Hello and acknowledges it; only
// then does the successor's session get its reader.
func (r *run) handshakeSuccessor() error {
	sh, err := r.successorHello(r.succ)
	if err != nil {
		return err
	}
	r.s.mu.Lock()
	r.succ.child.buildID = sh.BuildID
	r.s.mu.Unlock()
	expect := r.expectConns()
	if err := r.s.ackHelloExpecting(r.succ.conn, sh, r.id, r.deadline, expect); err != nil {
		return r.abortAs(ErrSuccessorFailed, "handshake with the successor failed: %v", err)
	}
	// We hold the passed connections too, until the commit.
	if err := fdutil.GrowTable(expect); err != nil {
		r.s.log.Debug("handoff: making room for the passed connections' descriptors", "conns", expect, "err", err)
	}
	// Only now, with the version set, may a reader use the connection.
	r.startReader(r.succ)
	return nil
}

// warmUp waits for the successor's ReadyToBegin (protocol version 2 on):
// it prepares read-only while the incumbent serves, sending heartbeats,
// bounded by the deadline. If it dies, stalls or gives up, the handoff
// aborts before the incumbent was asked for anything but its Hello.
func (r *run) warmUp() error {
	if r.succ.conn.Version() < wire.WarmUpVersion {
		return nil
	}
	r.s.setPhase(r.id, PhaseWarmingUp)
	t0 := time.Now()
	fr, err := r.awaitUntil(r.succ, r.deadline, wire.TypeReadyToBegin, wire.TypeAbort)
	r.out.Phases.WarmUp = time.Since(t0)
	if err != nil {
		return err
	}
	if m, ok := fr.Msg.(wire.Abort); ok {
		return r.abortAs(ErrSuccessorFailed, "the successor (pid %d) gave up during its warm-up: %s", r.succ.child.pid, m.Reason)
	}
	r.succRoom = max(fr.Msg.(wire.ReadyToBegin).ConnRoom, 0)
	crash.Point("supervisor-after-warm-up")
	return nil
}

// drain asks the incumbent to drain and starts the accept gap. SealRequest
// is pipelined behind PrepareHandoff: the incumbent seals only after its
// own drain succeeded (after a failed drain it answers SealFailed), and
// one round trip leaves the gap.
func (r *run) drain() (wire.Drained, error) {
	r.s.setPhase(r.id, PhaseDraining)
	r.maxConns = r.connLimit()
	r.gapStart = time.Now()
	if err := r.send(r.inc, wire.PrepareHandoff{DeadlineMS: max(time.Until(r.deadline).Milliseconds(), 1), DrainGraceMS: r.spec.DrainGrace.Milliseconds(), MaxConns: r.maxConns}); err != nil {
		return wire.Drained{}, err
	}
	if err := r.send(r.inc, wire.SealRequest{}); err != nil {
		return wire.Drained{}, err
	}
	fr, err := r.awaitUntil(r.inc, time.Now().Add(r.spec.DrainGrace+replySlack), wire.TypeDrained, wire.TypeDrainFailed)
	if err != nil {
		return wire.Drained{}, err
	}
	if m, ok := fr.Msg.(wire.DrainFailed); ok {
		r.out.Phases.Drain = time.Since(r.gapStart)
		return wire.Drained{}, r.abortAs(ErrDrainFailed, "the incumbent's drain failed: %s", m.Reason)
	}
	drained := fr.Msg.(wire.Drained)
	r.out.Phases.Drain = time.Since(r.gapStart)
	if drained.PassedConns < 0 || drained.PassedConns > r.maxConns {
		return wire.Drained{}, r.violation(r.inc, "drained says %d connections are passed, at most %d were allowed", drained.PassedConns, r.maxConns)
	}
	// The Conns frames follow; the handoff does not wait for them before
	// the commit (see holdConns and passConns).
	r.wantConns = drained.PassedConns
	r.out.PassedConns = drained.PassedConns
	// No journal write here nor after the seal: recovery treats every
	// phase before the commit alike (kill the successor, resume the
	// incumbent), and the spawning record already names the successor.
	crash.Point("supervisor-after-drained")
	return drained, nil
}

// seal waits for the seal requested behind the drain and keeps the
// SealComplete in r.sealed: the incumbent releases the lock before
// answering.
func (r *run) seal() error {
	r.s.setPhase(r.id, PhaseSealing)
	t3 := time.Now()
	fr, err := r.awaitUntil(r.inc, r.deadline, wire.TypeSealComplete, wire.TypeSealFailed)
	if err != nil {
		return err
	}
	if m, ok := fr.Msg.(wire.SealFailed); ok {
		r.out.Phases.Seal = time.Since(t3)
		return r.abortAs(ErrSealFailed, "the incumbent's seal failed: %s", m.Reason)
	}
	sc := fr.Msg.(wire.SealComplete)
	r.sealed = &sc
	r.out.Phases.Seal = time.Since(t3)
	crash.Point("supervisor-after-sealed")
	return nil
}

// begin has the successor take the lock and open the data, and checks its
// Ready against the seal.
func (r *run) begin() (wire.Ready, error) {
	r.s.setPhase(r.id, PhaseBegun)
	t4 := time.Now()
	if err := r.send(r.succ, wire.Begin{}); err != nil {
		return wire.Ready{}, err
	}
	r.journalAhead(PhaseCommitting)
	fr, err := r.awaitUntil(r.succ, r.deadline, wire.TypeReady, wire.TypeAbort)
	if err != nil {
		return wire.Ready{}, err
	}
	if m, ok := fr.Msg.(wire.Abort); ok {
		r.out.Phases.BeginToReady = time.Since(t4)
		return wire.Ready{}, r.abortAs(ErrSuccessorFailed, "the successor (pid %d) gave up after Begin: %s", r.succ.child.pid, m.Reason)
	}
	ready := fr.Msg.(wire.Ready)
	r.out.Phases.BeginToReady = time.Since(t4)
	if err := checkReady(ready, *r.sealed); err != nil {
		return wire.Ready{}, r.abortAs(ErrReadyRejected, "%v", err)
	}
	return ready, nil
}

// commit commits the successor first (it is the next incumbent), then the
// old incumbent, which exits; work is the daemons' own drain, seal and
// open time, the part of the accept gap that is not the library's. It
// can fail (and abort) only until the successor has taken its Commit.
func (r *run) commit(work time.Duration) error {
	s, c := r.s, r.succ.child
	s.setPhase(r.id, PhaseCommitting)
	if err := r.journalJoin(); err != nil {
		return err
	}
	crash.Point("supervisor-before-commit")
	if err := r.succ.conn.Send(wire.Commit{Conns: r.wantConns}, string(r.id), writeTimeout); err != nil {
		return r.abortAs(ErrSuccessorFailed, "the successor vanished at the commit: %v", err)
	}
	r.out.Phases.AcceptGap = time.Since(r.gapStart)
	// The successor owns the passed connections from its Commit on; it
	// serves already, and takes them now.
	r.passConns()
	r.out.Phases.DaemonWork = work
	r.out.Phases.LibraryOverhead = max(r.out.Phases.AcceptGap-work, 0)
	if err := r.inc.conn.Send(wire.Commit{}, string(r.id), writeTimeout); err != nil {
		s.log.Warn("handoff: the old incumbent did not take its Commit (it will exit when it sees the session end and finds the lock taken)", "pid", r.inc.child.pid, "err", err)
	}
	s.mu.Lock()
	s.inc = c
	s.mu.Unlock()
	// The new incumbent takes over the control socket path after its
	// Commit; wait until it answers there, so the next handoff (or a
	// restarted supervisor) finds it and not its predecessor.
	actx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), s.cfg.HelloTimeout+s.cfg.Liveness)
	if _, err := s.awaitDaemon(actx, c); err != nil {
		s.log.Error("handoff: committed, but the new incumbent does not answer on the control socket", "pid", c.pid, "err", err)
	}
	cancel()
	r.out.Committed = true
	r.out.PID = c.pid
	r.out.Binary = r.spec.Binary
	s.mu.Lock()
	r.out.BuildID = c.buildID
	s.mu.Unlock()
	return nil
}

// successorHello reads p's Hello on a goroutine of its own: no reader may
// run before ackHello has set the connection's version. The read is
// bounded by HelloTimeout and the deadline; the child's exit, ctx, or the
// incumbent failing (its exit, its session ending, anything but a
// heartbeat from it) cut it short (the socket is closed, and the reading
// goroutine joined).
func (r *run) successorHello(p *peer) (wire.Hello, error) {
	bound := min(r.s.cfg.HelloTimeout, max(time.Until(r.deadline), time.Millisecond))
	ch := make(chan recvResult, 1)
	go func() {
		f, err := p.conn.Recv(bound)
		ch <- recvResult{f, err}
	}()
	cut := func(err error) (wire.Hello, error) {
		p.conn.UnixConn().Close()
		closeFDs((<-ch).f.FDs)
		p.dead = ErrSessionLost
		return wire.Hello{}, err
	}
	inc := r.inc
	var res recvResult
wait:
	for {
		select {
		case res = <-ch:
			break wait
		case <-p.child.done:
			return cut(r.exited(p))
		case <-r.ctx.Done():
			return cut(&abortError{reason: "the handoff was cancelled: " + r.ctx.Err().Error(), err: r.ctx.Err()})
		case <-inc.child.done:
			return cut(r.exited(inc))
		case ir := <-inc.frames:
			if ir.err != nil {
				inc.dead = ir.err
				return cut(r.peerFailed(inc, ir.err))
			}
			closeFDs(ir.f.FDs)
			if ir.f.ID != string(r.id) {
				return cut(r.violation(inc, "%s for handoff %q during handoff %q", ir.f.Msg.Type(), ir.f.ID, r.id))
			}
			if ir.f.Msg.Type() != wire.TypeHeartbeat {
				return cut(r.violation(inc, "unexpected %s while waiting for the successor's hello", ir.f.Msg.Type()))
			}
		}
	}
	if res.err != nil {
		p.dead = res.err
		if errors.Is(res.err, ErrTimeout) && !p.child.exited() {
			ae := r.abortAs(ErrSuccessorFailed, "the successor (pid %d) sent no Hello within %v", p.child.pid, bound)
			ae.err = ErrTimeout
			return wire.Hello{}, ae
		}
		return wire.Hello{}, r.peerFailed(p, res.err)
	}
	closeFDs(res.f.FDs)
	h, ok := res.f.Msg.(wire.Hello)
	switch {
	case !ok:
		return wire.Hello{}, r.violation(p, "expected hello, got %s", res.f.Msg.Type())
	case res.f.ID != "":
		return wire.Hello{}, r.violation(p, "hello carries handoff id %q; it must carry none", res.f.ID)
	case h.Role != wire.RoleSuccessor:
		return wire.Hello{}, r.violation(p, "hello with role %q, want %q", h.Role, wire.RoleSuccessor)
	case h.PID != p.child.pid:
		return wire.Hello{}, r.violation(p, "hello from pid %d, but the spawned child is pid %d", h.PID, p.child.pid)
	}
	return h, nil
}

// checkReady accepts Ready only if the successor is healthy and has at
// least every sealed revision.
func checkReady(m wire.Ready, sc wire.SealComplete) error {
	if !m.HealthzOK {
		return errors.New("the successor reported itself unhealthy (HealthzOK=false)")
	}
	if len(m.AdvertisedRevisionPerShard) < len(sc.LastRevisionPerShard) {
		return fmt.Errorf("the successor advertises %d shards, the incumbent sealed %d", len(m.AdvertisedRevisionPerShard), len(sc.LastRevisionPerShard))
	}
	for i, sealed := range sc.LastRevisionPerShard {
		if adv := m.AdvertisedRevisionPerShard[i]; adv < sealed {
			return fmt.Errorf("the successor advertises revision %d for shard %d, below the sealed %d (stale data)", adv, i, sealed)
		}
	}
	return nil
}

func (r *run) send(p *peer, m wire.Message) error {
	if err := p.conn.Send(m, string(r.id), writeTimeout); err != nil {
		if errors.Is(err, ErrSessionLost) {
			// The peer closed its end: most often it is exiting.
			return r.peerFailed(p, err)
		}
		ae := r.abortAs(r.kindOf(p), "could not send %s to the %s: %v", m.Type(), p.name, err)
		ae.incumbentGone = p == r.inc
		return ae
	}
	return nil
}

// awaitUntil waits for one of want from p. Heartbeats from either peer
// reset that peer's liveness; the other peer failing, either process
// exiting, liveness, until, the handoff deadline or ctx abort the wait.
func (r *run) awaitUntil(p *peer, until time.Time, want ...wire.Type) (wire.Frame, error) {
	until = minTime(until, r.deadline)
	limit := time.NewTimer(time.Until(until))
	defer limit.Stop()
	live := time.NewTimer(r.s.cfg.Liveness)
	defer live.Stop()
	other := r.succ
	if p == r.succ {
		other = r.inc
	}
	var otherFrames <-chan recvResult
	var otherDone <-chan struct{}
	if other != nil && other.dead == nil {
		otherFrames = other.frames
	}
	pDone := p.child.done
	// Once the incumbent has sealed it has nothing left to do: its exit
	// no longer matters to a successor that is opening the data.
	passive := other == r.inc && r.sealed != nil
	if other != nil && !passive {
		otherDone = other.child.done
	}
	for {
		select {
		case res := <-p.frames:
			if res.err != nil {
				p.dead = res.err
				return wire.Frame{}, r.peerFailed(p, res.err)
			}
			if m, ok := res.f.Msg.(wire.Conns); ok && p == r.inc && res.f.ID == string(r.id) {
				if err := r.holdConns(m, res.f.FDs); err != nil {
					return wire.Frame{}, err
				}
				live.Reset(r.s.cfg.Liveness)
				continue
			}
			closeFDs(res.f.FDs)
			if res.f.ID != string(r.id) {
				return wire.Frame{}, r.violation(p, "%s for handoff %q during handoff %q", res.f.Msg.Type(), res.f.ID, r.id)
			}
			if res.f.Msg.Type() == wire.TypeHeartbeat {
				live.Reset(r.s.cfg.Liveness)
				r.s.emit(Event{Kind: EventHeartbeat, HandoffID: r.id, PID: p.child.pid})
				continue
			}
			if slices.Contains(want, res.f.Msg.Type()) {
				return res.f, nil
			}
			if m, ok := res.f.Msg.(wire.Error); ok {
				return wire.Frame{}, r.abortAs(r.kindOf(p), "the %s refused: %s", p.name, m.Reason)
			}
			return wire.Frame{}, r.violation(p, "unexpected %s (waiting for %v)", res.f.Msg.Type(), want)
		case res := <-otherFrames:
			if res.err != nil {
				other.dead = res.err
				otherFrames = nil
				if passive {
					r.s.log.Warn("handoff: the sealed incumbent closed its session", "pid", other.child.pid, "err", res.err)
					continue
				}
				return wire.Frame{}, r.peerFailed(other, res.err)
			}
			if m, ok := res.f.Msg.(wire.Conns); ok && other == r.inc && res.f.ID == string(r.id) {
				if err := r.holdConns(m, res.f.FDs); err != nil {
					return wire.Frame{}, err
				}
				continue
			}
			closeFDs(res.f.FDs)
			if res.f.ID != string(r.id) {
				return wire.Frame{}, r.violation(other, "%s for handoff %q during handoff %q", res.f.Msg.Type(), res.f.ID, r.id)
			}
			if res.f.Msg.Type() != wire.TypeHeartbeat {
				return wire.Frame{}, r.violation(other, "unexpected %s while waiting for the %s", res.f.Msg.Type(), p.name)
			}
		case <-pDone:
			// What it sent before it died comes first (a sealed
			// incumbent's SealComplete, its Conns frames): its reader
			// delivers the rest of the stream and ends, and peerFailed
			// then reports the exit.
			if p.dead != nil {
				return wire.Frame{}, r.exited(p)
			}
			pDone = nil
		case <-otherDone:
			return wire.Frame{}, r.exited(other)
		case <-live.C:
			ae := r.abortAs(r.kindOf(p), "the %s (pid %d) sent nothing for %v (liveness timeout) while the supervisor waited for %v", p.name, p.child.pid, r.s.cfg.Liveness, want)
			ae.err = ErrTimeout
			return wire.Frame{}, ae
		case <-limit.C:
			what := "the handoff deadline passed"
			if until.Before(r.deadline) {
				what = "its time ran out"
			}
			ae := r.abortAs(r.kindOf(p), "the %s (pid %d) did not send %v: %s", p.name, p.child.pid, want, what)
			ae.err = ErrTimeout
			return wire.Frame{}, ae
		case <-r.ctx.Done():
			return wire.Frame{}, &abortError{reason: "the handoff was cancelled: " + r.ctx.Err().Error(), err: r.ctx.Err()}
		}
	}
}

// connLimit is how many connections the incumbent may pass: what both
// daemons speak protocol version 3 and what fits in the successor's and
// our own descriptor limits.
func (r *run) connLimit() int {
	if r.inc.conn.Version() < wire.ConnsVersion || r.succ.conn.Version() < wire.ConnsVersion {
		return 0
	}
	return min(r.succRoom, fdutil.Room(connMargin))
}

// expectConns is about how many connections the incumbent may pass: its
// open descriptors (its connections and a few of its own), if it speaks
// protocol version 3. The successor and we make room for them before the
// accept gap (see fdutil.GrowTable).
func (r *run) expectConns() int {
	if r.inc.conn.Version() < wire.ConnsVersion {
		return 0
	}
	n, err := fdutil.OpenCount(r.inc.child.pid)
	if err != nil {
		return 0
	}
	return min(n, fdutil.Room(connMargin))
}

// holdConns keeps the connections in one Conns frame from the incumbent
// (which keeps its own copies until its Commit). They go to the successor
// after its Commit (passConns), to the cold start after a rollback whose
// incumbent died, and are closed otherwise.
func (r *run) holdConns(m wire.Conns, fds []int) error {
	metas, err := m.Decode()
	if err != nil {
		closeFDs(fds)
		return r.violation(r.inc, "%v", err)
	}
	if len(fds) != len(metas) {
		closeFDs(fds)
		return r.violation(r.inc, "conns frame with %d entries and %d descriptors", len(metas), len(fds))
	}
	if n := r.forwarded + r.held.count() + len(fds); n > r.wantConns {
		closeFDs(fds)
		return r.violation(r.inc, "%d connections arrived, its drained said %d", n, r.wantConns)
	}
	r.held.add(metas, fds)
	crash.Point("supervisor-holding-conns")
	return nil
}

// passConns sends the committed successor the connections the incumbent
// passed: those we hold, then the rest as they arrive, each frame's copies
// closed once sent. The successor serves already; if it died right after
// its Commit, what it had not taken is lost with it, as is every
// connection it served. An incumbent that stops sending them (it died, or
// broke the protocol) loses the rest, which it owned.
func (r *run) passConns() {
	defer r.held.close()
	forward := func(h *heldConns) bool {
		defer h.close()
		for i := 0; i < h.count(); {
			j := wire.ConnBatchEnd(h.metas, i)
			if err := r.succ.conn.Send(wire.EncodeConns(h.metas[i:j]), string(r.id), writeTimeout, h.fds[i:j]...); err != nil {
				r.s.log.Error("handoff: committed, but passing the connections to the new incumbent failed; the rest are closed", "pid", r.succ.child.pid, "passed", r.forwarded, "of", r.wantConns, "err", err)
				return false
			}
			r.forwarded += j - i
			i = j
		}
		return true
	}
	var now heldConns
	now.take(&r.held)
	if !forward(&now) {
		return
	}
	wait := time.NewTimer(r.s.cfg.Liveness)
	defer wait.Stop()
	for r.forwarded < r.wantConns && r.inc.dead == nil {
		select {
		case res := <-r.inc.frames:
			if res.err != nil {
				r.inc.dead = res.err // ends the loop
				continue
			}
			m, ok := res.f.Msg.(wire.Conns)
			if !ok {
				closeFDs(res.f.FDs)
				continue // a heartbeat; anything else waits for its Commit
			}
			if err := r.holdConns(m, res.f.FDs); err != nil {
				r.s.log.Error("handoff: the old incumbent passed bad connections after the commit", "err", err)
				return
			}
			now.take(&r.held)
			if !forward(&now) {
				return
			}
			wait.Reset(r.s.cfg.Liveness)
		case <-wait.C:
			r.s.log.Error("handoff: committed, but the old incumbent stopped passing connections", "pid", r.inc.child.pid, "passed", r.forwarded, "of", r.wantConns)
			return
		}
	}
	if r.forwarded < r.wantConns {
		r.s.log.Error("handoff: committed, but the old incumbent went away before passing every connection", "pid", r.inc.child.pid, "passed", r.forwarded, "of", r.wantConns)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// exitWait bounds how long a peer that closed its control channel is given
// to be seen exiting, so that the abort reason says it exited (with its
// status) rather than that it hung up. A busy machine can take a while
// between a process closing its descriptors and its parent reaping it.
const exitWait = 2 * time.Second

func (r *run) peerFailed(p *peer, err error) error {
	// A closed channel usually means the process died; say so if it did.
	t := time.NewTimer(min(exitWait, max(time.Until(r.deadline), 0)))
	defer t.Stop()
	select {
	case <-p.child.done:
		return r.exited(p)
	case <-t.C:
	}
	ae := r.abortAs(r.kindOf(p), "the %s (pid %d) closed its control channel: %v", p.name, p.child.pid, err)
	ae.err = err
	ae.incumbentGone = p == r.inc
	return ae
}

func (r *run) exited(p *peer) error {
	ae := r.abortAs(r.kindOf(p), "the %s (pid %d) exited: %v", p.name, p.child.pid, p.child.state)
	ae.incumbentGone = p == r.inc
	return ae
}

func (r *run) violation(p *peer, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	p.conn.Send(wire.Error{Reason: msg}, string(r.id), writeTimeout)
	p.dead = ErrProtocol
	p.hangUp()
	ae := r.abortAs(r.kindOf(p), "protocol violation by the %s (pid %d): %s", p.name, p.child.pid, msg)
	ae.err = ErrProtocol
	return ae
}

// rollback puts things back as they were: the successor told to abort,
// then killed and reaped; the incumbent told to resume (or, if its session
// is unusable, asked again on a fresh one). It returns an error only if the
// incumbent could not resume.
func (r *run) rollback(ae *abortError) (err error) {
	s := r.s
	s.setPhase(r.id, PhaseRollingBack)
	r.journalJoin() // its error no longer matters: the record is replaced now
	if err := r.journal(PhaseRollingBack); err != nil {
		s.log.Error("handoff: journal write failed during rollback", "err", err)
	}
	if r.succ != nil {
		if r.succ.dead == nil && r.succ.conn.UnixConn() != nil {
			r.succ.conn.Send(wire.Abort{Reason: ae.reason}, string(r.id), writeTimeout)
		}
		if err := r.succ.child.killAndReap(time.Second); err != nil {
			s.log.Error("handoff: successor not reaped", "pid", r.succ.child.pid, "err", err)
		}
		r.succ.hangUp()
	}
	inc := r.inc
	s.mu.Lock()
	c := s.inc
	s.mu.Unlock()
	if c == nil || c.exited() {
		// end() reports the exit; the known-good binary is cold-started
		// by the caller, and gets the connections we hold.
		r.keepHeld()
		return nil
	}
	// The incumbent kept its own copies and serves them again. Ours stay
	// until it said so: if it exits instead (it died before resuming, or
	// could not resume and closed its copies), the next cold start gets
	// them, with those it sent meanwhile.
	defer func() {
		if err != nil && !errors.Is(err, errCouldNotResume) {
			t := time.NewTimer(min(exitWait, max(time.Until(r.deadline), 0)+replySlack))
			select {
			case <-c.done:
			case <-t.C:
			}
			t.Stop()
		}
		if c.exited() || errors.Is(err, errCouldNotResume) {
			r.keepHeld()
			return
		}
		r.held.close()
	}()
	if r.gapStart.IsZero() {
		// Never asked to drain (the handoff failed before, maybe before
		// even reaching it): it serves as it did, with nothing to resume.
		s.log.Info("handoff: the incumbent was never asked to drain; it serves on", "pid", c.pid)
		return nil
	}
	var broken *brokenSession
	if inc != nil && inc.dead == nil {
		// Sent directly, not through r.send: a failure here only means
		// asking again on a fresh session, at once.
		if err := inc.conn.Send(wire.ResumeAfterAbort{Reason: ae.reason}, string(r.id), writeTimeout); err == nil {
			if err := r.awaitResumed(inc); err == nil || !errors.As(err, &broken) {
				return err
			}
		}
	}
	// The session is gone or unusable (ended, reset, a protocol break; the
	// incumbent resumes by itself when its session ends): confirm on a
	// fresh one. ResumeAfterAbort is idempotent.
	if inc != nil {
		inc.hangUp()
	}
	var last error
	for attempt := 0; attempt < 3; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HelloTimeout+s.cfg.Liveness)
		conn, h, err := s.dialIncumbent(ctx)
		cancel()
		if err != nil {
			last = err
			// A refused dial most often means it died: its descriptors
			// close before it is reaped, so give the reaping a moment.
			t := time.NewTimer(exitWait)
			select {
			case <-c.done:
			case <-t.C:
			}
			t.Stop()
			if c.exited() {
				return nil
			}
			continue
		}
		p := &peer{name: "incumbent", conn: conn, child: c}
		if err := s.ackHello(conn, h, r.id, time.Time{}); err == nil {
			if err := conn.Send(wire.ResumeAfterAbort{Reason: ae.reason}, string(r.id), writeTimeout); err == nil {
				r.startReader(p) // close closes conn
				err := r.awaitResumed(p)
				if err == nil || !errors.As(err, &broken) {
					return err
				}
				last = err
				p.hangUp()
				continue
			}
		}
		conn.Close()
	}
	return fmt.Errorf("handoff: could not confirm that the incumbent resumed: %w", last)
}

// keepHeld gives the connections we hold, with those still arriving on
// the incumbent's sessions, to the next cold start: the incumbent is gone
// or will not serve them.
func (r *run) keepHeld() {
	for _, p := range r.read {
		if p != r.succ && p.dead == nil {
			r.collectConns(p)
		}
	}
	if n := r.held.count(); n > 0 {
		r.s.mu.Lock()
		r.s.held.take(&r.held)
		r.s.mu.Unlock()
		r.s.log.Warn("handoff: the incumbent passed connections and is gone; the next cold start gets them", "conns", n)
	}
}

// collectConns holds the Conns frames still delivered on p (a session of
// the incumbent, which ended or is hung up), until its reader ends.
func (r *run) collectConns(p *peer) {
	t := time.NewTimer(exitWait)
	defer t.Stop()
	for {
		select {
		case res := <-p.frames:
			if res.err != nil {
				p.dead = res.err
				return
			}
			if m, ok := res.f.Msg.(wire.Conns); ok && res.f.ID == string(r.id) {
				if r.holdConns(m, res.f.FDs) != nil {
					return
				}
				continue
			}
			closeFDs(res.f.FDs)
		case <-t.C:
			return
		}
	}
}

// errCouldNotResume: the incumbent answered that it could not resume (it
// closed its passed connections and exits).
var errCouldNotResume = errors.New("handoff: the incumbent could not resume")

// brokenSession is an error of the session itself (it ended, or the peer
// broke the protocol) while waiting for Resumed: worth asking again on a
// fresh session.
type brokenSession struct{ err error }

func (e *brokenSession) Error() string { return e.err.Error() }
func (e *brokenSession) Unwrap() error { return e.err }

// awaitResumed waits for Resumed, skipping replies to earlier requests.
func (r *run) awaitResumed(p *peer) error {
	limit := time.NewTimer(max(time.Until(r.deadline), 0) + r.s.cfg.Liveness + replySlack)
	defer limit.Stop()
	for {
		select {
		case res := <-p.frames:
			if res.err != nil {
				p.dead = res.err
				return &brokenSession{fmt.Errorf("handoff: waiting for the incumbent to resume: %w", res.err)}
			}
			if m, ok := res.f.Msg.(wire.Conns); ok && res.f.ID == string(r.id) {
				// Held until it resumed (see rollback): it may die first.
				if err := r.holdConns(m, res.f.FDs); err != nil {
					p.dead = ErrProtocol
					return &brokenSession{err}
				}
				continue
			}
			closeFDs(res.f.FDs)
			switch m := res.f.Msg.(type) {
			case wire.Resumed:
				if m.Error != "" {
					return fmt.Errorf("%w (pid %d): %s", errCouldNotResume, p.child.pid, m.Error)
				}
				return nil
			case wire.Heartbeat, wire.Drained, wire.DrainFailed, wire.SealComplete, wire.SealFailed, wire.Conns:
				continue
			default:
				p.dead = ErrProtocol
				return &brokenSession{fmt.Errorf("%w: %s from the incumbent while it resumed", ErrProtocol, res.f.Msg.Type())}
			}
		case <-p.child.done:
			return nil // its exit is reported by IncumbentExits
		case <-limit.C:
			return fmt.Errorf("%w: the incumbent (pid %d) did not confirm it resumed", ErrTimeout, p.child.pid)
		}
	}
}
