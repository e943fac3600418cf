package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/handoff-go/handoff/internal/okline"
	"github.com/handoff-go/handoff/internal/peercred"
	"github.com/handoff-go/handoff/supervisor"
	"golang.org/x/sys/unix"
)

// The trigger protocol: a client connects to the trigger socket, sends one
// line and reads one line back.
//
//	handoff            hand off to the configured binary
//	handoff <binary>   hand off to <binary> (binary or allowed_binaries)
//	status             the supervisor's status as one JSON object
//
// Replies start with "ok: " or "err: ". A handoff answers
// "ok: id=<id> committed=true|false pid=<pid> build_id=<q> accept_gap=<d> library_overhead=<d> passed_conns=<n> reason=<q>"
// (q: a Go-quoted string) once it has committed or rolled back.
const (
	// maxLine bounds a command line, newline excluded.
	maxLine = 4096
	// lineTimeout bounds the wait for a client's command line.
	lineTimeout = 5 * time.Second
	// replyTimeout bounds writing the reply.
	replyTimeout = 5 * time.Second
	// maxTriggerConns and minTriggerConns bound the connections served at
	// once; within them the run command sets the bound by what
	// RLIMIT_NOFILE leaves (fdLimit.triggerConns). Idle clients hold a
	// connection for at most lineTimeout; each costs a descriptor and a
	// goroutine.
	maxTriggerConns = 2048
	minTriggerConns = 4
	// drainTimeout bounds reading what a client sent past its line before
	// closing, so that our close does not reset the connection under
	// the reply.
	drainTimeout = 200 * time.Millisecond
	// lineBuffer is the read buffer of a line reader; longer lines are
	// gathered from several reads, up to the reader's bound.
	lineBuffer = 256
)

// errLineTooLong: the client's line exceeds maxLine.
var errLineTooLong = fmt.Errorf("line longer than %d bytes", maxLine)

// command is one parsed trigger line.
type command struct {
	verb   string // "handoff" or "status"
	binary string // for handoff; empty means the configured binary
}

// parseCommand parses one trigger line (without its newline).
func parseCommand(line string) (command, error) {
	line = strings.TrimSuffix(line, "\r")
	verb, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	rest = strings.TrimSpace(rest)
	switch verb {
	case "handoff":
		return command{verb: verb, binary: rest}, nil
	case "status":
		if rest != "" {
			return command{}, fmt.Errorf("status takes no argument, got %q", rest)
		}
		return command{verb: verb}, nil
	case "":
		return command{}, errors.New("empty command (want: handoff [<binary>] or status)")
	}
	return command{}, fmt.Errorf("unknown command %q (want: handoff [<binary>] or status)", verb)
}

// readLine reads one line of at most max bytes (newline excluded). A last
// line without a newline counts when the client closed its side.
func readLine(r io.Reader, max int) (string, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, int64(max)+1), lineBuffer)
	line, err := br.ReadString('\n')
	if strings.HasSuffix(line, "\n") {
		return strings.TrimSuffix(line, "\n"), nil
	}
	if len(line) > max {
		return "", errLineTooLong
	}
	if errors.Is(err, io.EOF) && line != "" {
		return line, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return "", io.ErrUnexpectedEOF
	}
	return "", err
}

// oneLine makes s safe to send as (part of) a reply line.
func oneLine(s string) string {
	return strings.NewReplacer("\n", " ", "\r", " ").Replace(s)
}

// errReply is the reply line for err.
func errReply(err error) string { return "err: " + oneLine(err.Error()) }

// peerPolicy says which local users may use the trigger socket: the
// supervisor's own user, root, and allowed_uids.
type peerPolicy struct {
	self    uint32
	allowed []uint32
}

func (p peerPolicy) permits(uid uint32) bool {
	return uid == 0 || uid == p.self || slices.Contains(p.allowed, uid)
}

// listenTrigger creates the trigger socket at path with mode 0600 and, for
// allowed_uids, an access ACL granting those users read and write (see
// setTriggerACL), never leaving a moment where path exists with wider
// access: it binds a temporary name beside path, restricts it and renames
// it over path. It refuses when something already answers at path
// (another supervisor).
func listenTrigger(path string, allowed []uint32) (*net.UnixListener, error) {
	if c, err := net.DialTimeout("unix", path, staleProbeTimeout); err == nil {
		c.Close()
		return nil, fmt.Errorf("trigger socket %s: another process answers on it (is another supervisor running?)", path)
	}
	tmp := filepath.Join(filepath.Dir(path), ".t"+strconv.Itoa(os.Getpid())+"-"+filepath.Base(path))
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("trigger socket: remove leftover %s: %w", tmp, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("trigger socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("trigger socket: %w", err))
	}
	if err := setTriggerACL(tmp, path, allowed); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("trigger socket: %w", err))
	}
	return ln, nil
}

// POSIX access ACL, as Linux stores it in the system.posix_acl_access
// extended attribute: a little-endian u32 version, then one entry per
// tag/qualifier (u16 tag, u16 permissions, u32 id), sorted by tag and id.
const (
	aclXattr     = "system.posix_acl_access"
	aclVersion   = 2
	aclUserObj   = 0x01
	aclUser      = 0x02
	aclGroupObj  = 0x04
	aclMask      = 0x10
	aclOther     = 0x20
	aclReadWrite = 0o6
	aclNoID      = 0xFFFFFFFF
)

// triggerACL encodes an access ACL: the owner and each of uids may read and
// write (connecting to a unix socket needs write permission), nobody else
// may do anything.
func triggerACL(uids []uint32) []byte {
	uids = slices.Clone(uids)
	slices.Sort(uids)
	uids = slices.Compact(uids)
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	entry := func(tag, perm uint16, id uint32) {
		b = binary.LittleEndian.AppendUint16(b, tag)
		b = binary.LittleEndian.AppendUint16(b, perm)
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	entry(aclUserObj, aclReadWrite, aclNoID)
	for _, uid := range uids {
		entry(aclUser, aclReadWrite, uid)
	}
	entry(aclGroupObj, 0, aclNoID)
	entry(aclMask, aclReadWrite, aclNoID)
	entry(aclOther, 0, aclNoID)
	return b
}

// setTriggerACL gives allowed (allowed_uids) access to the socket file at
// file, which will be at path: the 0600 mode alone would refuse them
// before the supervisor's SO_PEERCRED check. Without allowed it removes
// any ACL and sets the mode back to 0600: the group bits held the ACL's
// mask (rw), and without the ACL they would grant the group.
func setTriggerACL(file, path string, allowed []uint32) error {
	if len(allowed) == 0 {
		if err := unix.Removexattr(file, aclXattr); err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("trigger socket %s: remove its ACL: %w", path, err)
		}
		if err := os.Chmod(file, 0o600); err != nil {
			return fmt.Errorf("trigger socket %s: %w", path, err)
		}
		return nil
	}
	if err := unix.Setxattr(file, aclXattr, triggerACL(allowed), 0); err != nil {
		return fmt.Errorf("allowed_uids: cannot grant them access to the trigger socket %s with an ACL (does its filesystem support POSIX ACLs?): %w", path, err)
	}
	return nil
}

// socketInode is the inode of the socket behind ln, to tell later whether
// a path still belongs to it.
func socketInode(path string) uint64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

// triggerHandler answers one command. It must return once ctx is done.
type triggerHandler func(ctx context.Context, cmd command) string

// triggerServer serves the trigger socket. Its accept loop and one
// goroutine per connection are joined by pause and close. It can be
// paused without closing the socket (clients queue in the kernel), for a
// re-exec that passes the socket on.
//
// The accept loop never waits for a client: each connection is served on
// a goroutine of its own, its line bounded by lineTimeout, and one past
// the bound on connections is refused with one line and closed at once.
type triggerServer struct {
	ln     *net.UnixListener
	path   string
	ino    uint64
	permit func(uid uint32) bool // peerPolicy.permits outside tests
	handle triggerHandler
	log    *slog.Logger
	// lineTimeout is the wait for a client's line (lineTimeout outside tests).
	lineTimeout time.Duration

	mu      sync.Mutex
	running bool
	ctx     context.Context
	cancel  context.CancelCauseFunc
	conns   map[*net.UnixConn]struct{}
	wg      sync.WaitGroup
	sem     chan struct{} // one token per connection served; its capacity is the bound
}

func newTriggerServer(ln *net.UnixListener, path string, policy peerPolicy, handle triggerHandler, log *slog.Logger) *triggerServer {
	return &triggerServer{
		ln: ln, path: path, ino: socketInode(path), permit: policy.permits, handle: handle, log: log,
		lineTimeout: lineTimeout,
		conns:       map[*net.UnixConn]struct{}{},
		sem:         make(chan struct{}, maxTriggerConns),
	}
}

// limitConns bounds the connections served at once to n (at least one);
// it must be called before the first start.
func (s *triggerServer) limitConns(n int) {
	s.sem = make(chan struct{}, max(n, 1))
}

// start serves until pause or close.
func (s *triggerServer) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return
	}
	s.ln.SetDeadline(time.Time{})
	s.running = true
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	s.wg.Add(1)
	go s.acceptLoop(s.ctx)
}

// pause stops accepting, tells handlers still waiting why (cause) and
// waits for every connection to finish. The socket stays open.
func (s *triggerServer) pause(cause error) {
	s.mu.Lock()
	if !s.running {
		s.mu.Unlock()
		return
	}
	s.running = false
	s.cancel(cause)
	s.ln.SetDeadline(time.Unix(1, 0))
	for c := range s.conns {
		// Wake a handler still waiting for its client's line.
		c.SetReadDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// close stops serving, closes the socket and removes its path if it is
// still ours.
func (s *triggerServer) close(cause error) error {
	s.pause(cause)
	err := s.ln.Close()
	if s.ino != 0 && socketInode(s.path) == s.ino {
		if rerr := os.Remove(s.path); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

func (s *triggerServer) acceptLoop(ctx context.Context) {
	defer s.wg.Done()
	delay := 5 * time.Millisecond
	saturated := false // refusing connections, logged once until a slot frees
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Out of descriptors or memory: wait a little rather than spin.
			s.log.Error("trigger socket: accept failed", "err", err)
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			delay = min(delay*2, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		select {
		case s.sem <- struct{}{}:
			saturated = false
		default:
			if !saturated {
				s.log.Warn("trigger socket: too many connections at once; refusing new ones until some end", "limit", cap(s.sem))
				saturated = true
			}
			refuse(c, fmt.Sprintf("err: too many trigger connections (%d open); retry", cap(s.sem)))
			continue
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			s.serveConn(ctx, c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// serveConn answers one client: peer check, one line in, one line out.
func (s *triggerServer) serveConn(ctx context.Context, c *net.UnixConn) {
	defer s.finish(c)
	cred, err := peercred.Get(c)
	if err != nil {
		s.reply(c, errReply(err))
		return
	}
	log := s.log.With("peer_pid", cred.Pid, "peer_uid", cred.Uid)
	if !s.permit(cred.Uid) {
		log.Warn("trigger: permission denied")
		s.reply(c, "err: permission denied")
		return
	}
	c.SetReadDeadline(time.Now().Add(s.lineTimeout))
	if ctx.Err() != nil {
		// pause ran before our deadline was set and could not wake us.
		s.reply(c, errReply(context.Cause(ctx)))
		return
	}
	line, err := readLine(c, maxLine)
	if err != nil {
		var ne net.Error
		switch {
		case ctx.Err() != nil:
			err = context.Cause(ctx)
		case errors.As(err, &ne) && ne.Timeout():
			err = fmt.Errorf("no command line within %v", s.lineTimeout)
		case errors.Is(err, io.ErrUnexpectedEOF):
			err = errors.New("connection closed before a complete command line")
		}
		log.Warn("trigger: bad request", "err", err)
		s.reply(c, errReply(err))
		return
	}
	cmd, err := parseCommand(line)
	if err != nil {
		log.Warn("trigger: bad request", "err", err)
		s.reply(c, errReply(err))
		return
	}
	if cmd.verb == "handoff" {
		log.Info("trigger: handoff requested", "binary", cmd.binary)
	}
	s.reply(c, oneLine(s.handle(ctx, cmd)))
}

func (s *triggerServer) reply(c *net.UnixConn, line string) {
	c.SetWriteDeadline(time.Now().Add(replyTimeout))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		s.log.Warn("trigger: reply not delivered", "err", err)
	}
}

// refuse answers c with line and closes it, without ever waiting: one
// non-blocking write, which a fresh connection's empty buffer takes
// whole, and no draining of what the client sent. The client still reads
// the line: a unix socket delivers what was queued before it reports the
// reset that closing over unread data causes.
func refuse(c *net.UnixConn, line string) {
	if rc, err := c.SyscallConn(); err == nil {
		rc.Write(func(fd uintptr) bool {
			unix.Write(int(fd), []byte(line+"\n"))
			return true
		})
	}
	c.Close()
}

// finish closes c after reading (bounded) whatever the client still sent:
// closing a unix socket with unread data resets the peer, which could then
// miss the reply.
func (s *triggerServer) finish(c *net.UnixConn) {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(drainTimeout))
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	c.Close()
}

// handoffReply is the reply line for a finished handoff.
func handoffReply(o supervisor.Outcome) string {
	pid := o.PID
	return fmt.Sprintf("ok: id=%s committed=%t pid=%d build_id=%s accept_gap=%s library_overhead=%s passed_conns=%d reason=%s",
		okline.Value(string(o.ID)), o.Committed, pid, strconv.Quote(o.BuildID), o.Phases.AcceptGap, o.Phases.LibraryOverhead, o.PassedConns, strconv.Quote(oneLine(o.AbortReason)))
}
