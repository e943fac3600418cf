package supervisor

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/wire"
)

// fakeSupervisor opens a raw session with the incumbent: it reads Hello and
// answers HelloAck with id.
func fakeSupervisor(t *testing.T, sock, id string) *wire.Conn {
	t.Helper()
	conn := helloFromIncumbent(t, sock)
	if err := conn.Send(wire.HelloAck{Version: 1}, id, time.Second); err != nil {
		t.Fatal(err)
	}
	conn.SetVersion(1)
	return conn
}

// helloFromIncumbent connects to the control socket and reads the
// incumbent's Hello; the session is closed when the test ends.
func helloFromIncumbent(t *testing.T, sock string) *wire.Conn {
	t.Helper()
	nc, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn := wire.NewConn(nc.(*net.UnixConn))
	t.Cleanup(func() { conn.Close() })
	f, err := conn.Recv(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := f.Msg.(wire.Hello); !ok || h.Role != wire.RoleIncumbent {
		t.Fatalf("incumbent opened with %#v", f.Msg)
	}
	return conn
}

// expectClosed reads until the incumbent closes the session, accepting an
// Error frame before that.
func expectClosed(t *testing.T, conn *wire.Conn) {
	t.Helper()
	for {
		f, err := conn.Recv(10 * time.Second)
		if errors.Is(err, wire.ErrPeerClosed) {
			return
		}
		if err != nil {
			t.Fatalf("waiting for the incumbent to close the session: %v", err)
		}
		switch f.Msg.(type) {
		case wire.Error, wire.Heartbeat, wire.Drained, wire.SealComplete:
		default:
			t.Fatalf("unexpected %s before close", f.Msg.Type())
		}
	}
}

func expect(t *testing.T, conn *wire.Conn, want wire.Type) {
	t.Helper()
	for {
		f, err := conn.Recv(10 * time.Second)
		if err != nil {
			t.Fatalf("waiting for %s: %v", want, err)
		}
		if f.Msg.Type() == wire.TypeHeartbeat {
			continue
		}
		if f.Msg.Type() != want {
			t.Fatalf("got %s, want %s", f.Msg.Type(), want)
		}
		return
	}
}

func TestProtocolViolationsLeaveIncumbentServing(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{})
	l := startLoad(t, c.addr)
	serving := c.servingPID()
	send := func(conn *wire.Conn, m wire.Message, id string) {
		t.Helper()
		if err := conn.Send(m, id, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"wrong handoff id", func(t *testing.T) {
			conn := fakeSupervisor(t, c.sock, "a")
			send(conn, wire.PrepareHandoff{DeadlineMS: 10000, DrainGraceMS: 5000}, "b")
			expectClosed(t, conn)
		}},
		{"commit before seal_complete", func(t *testing.T) {
			conn := fakeSupervisor(t, c.sock, "a")
			send(conn, wire.Commit{}, "a")
			expectClosed(t, conn)
		}},
		{"commit after drain, before seal", func(t *testing.T) {
			conn := fakeSupervisor(t, c.sock, "a")
			send(conn, wire.PrepareHandoff{DeadlineMS: 10000, DrainGraceMS: 5000}, "a")
			expect(t, conn, wire.TypeDrained)
			send(conn, wire.Commit{}, "a")
			expectClosed(t, conn)
		}},
		{"wrong direction (a successor's Ready)", func(t *testing.T) {
			conn := fakeSupervisor(t, c.sock, "a")
			send(conn, wire.Ready{HealthzOK: true}, "a")
			expectClosed(t, conn)
		}},
		{"seal before drain", func(t *testing.T) {
			conn := fakeSupervisor(t, c.sock, "a")
			send(conn, wire.SealRequest{}, "a")
			expectClosed(t, conn)
		}},
		{"garbage bytes", func(t *testing.T) {
			conn := fakeSupervisor(t, c.sock, "a")
			conn.UnixConn().Write([]byte{0xff, 0xff, 0xff, 0x7f, 1, 0, 'x'})
			expectClosed(t, conn)
		}},
		{"no handoff id", func(t *testing.T) {
			conn := helloFromIncumbent(t, c.sock)
			send(conn, wire.HelloAck{Version: 1}, "")
			expectClosed(t, conn)
		}},
		{"unsupported version", func(t *testing.T) {
			conn := helloFromIncumbent(t, c.sock)
			send(conn, wire.HelloAck{Version: 99}, "a")
			expectClosed(t, conn)
		}},
		{"supervisor vanishes after the seal", func(t *testing.T) {
			conn := fakeSupervisor(t, c.sock, "a")
			send(conn, wire.PrepareHandoff{DeadlineMS: 10000, DrainGraceMS: 5000}, "a")
			expect(t, conn, wire.TypeDrained)
			send(conn, wire.SealRequest{}, "a")
			expect(t, conn, wire.TypeSealComplete)
			// The lock is free now; the supervisor dies.
			conn.Close()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t)
			// Each violation ends the session; the incumbent serves and
			// holds its lock. A read through the listener proves it serves.
			if pid := c.servingPID(); pid != serving {
				t.Fatalf("pid %d serves, want %d", pid, serving)
			}
			waitFor(t, "the incumbent to hold the lock again", func() bool {
				l, err := handoff.AcquireDataDirLock(c.dir)
				if err == nil {
					l.Release()
				}
				return errors.Is(err, handoff.ErrLockHeld)
			})
		})
	}
	if out := c.handoff(); !out.Committed {
		t.Fatalf("handoff after the violations: %s", out.AbortReason)
	}
	c.verify(l)
}

func TestResumeFromJournal(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{})
	l := startLoad(t, c.addr)
	journal := filepath.Join(filepath.Dir(c.dir), "journal")
	incPID := c.servingPID()

	// An orphaned successor left by a supervisor that died right after
	// spawning it (the incumbent is still idle, as in the spawning phase).
	// The real crash points of a supervisor process are exercised by
	// TestSupervisorCrashPoints (build tag handoff_crashpoints).
	orphan := startHolder(t)
	must(t, writeJournal(journal, journalRecord{
		Phase: PhaseSpawning, HandoffID: "dead",
		IncumbentPID: incPID, IncumbentStart: proc.StartTime(incPID), IncumbentBinary: os.Args[0],
		SuccessorPID: orphan.Process.Pid, SuccessorStart: proc.StartTime(orphan.Process.Pid), SuccessorBinary: os.Args[0],
	}))
	// The old supervisor is gone (its descriptors too); a new one starts
	// with no listeners and recovers everything from the daemon.
	sup2, err := New(Config{ControlSocket: c.sock, Journal: journal, Logger: testLogger(t)})
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must(t, sup2.ResumeFromJournal(ctx))
	waitErr := make(chan error, 1)
	go func() { waitErr <- orphan.Wait() }()
	select {
	case <-waitErr:
	case <-time.After(10 * time.Second):
		t.Fatal("the orphaned successor was not killed")
	}
	st := sup2.Status()
	if st.IncumbentPID != incPID || strings.Join(st.Listeners, ",") != "tcp" {
		t.Fatalf("status after resume: %+v", st)
	}
	rec, ok, err := readJournal(journal)
	if err != nil || !ok || rec.Phase != PhaseIdle || rec.IncumbentPID != incPID {
		t.Fatalf("journal after resume: %+v %v %v", rec, ok, err)
	}
	// The new supervisor hands off with the listener it got back.
	spec := c.spec()
	out, err := sup2.PerformHandoff(ctx, spec)
	if err != nil || !out.Committed {
		t.Fatalf("handoff by the recovered supervisor: %v %+v", err, out)
	}
	c.verify(l)
	must(t, sup2.Stop(ctx))
	sup2.Close()
}

func TestCorruptJournalIsMovedAside(t *testing.T) {
	dir := t.TempDir()
	journal := filepath.Join(dir, "journal")
	must(t, os.WriteFile(journal, []byte("{not json"), 0o600))
	sup, err := New(Config{ControlSocket: filepath.Join(dir, "ctl"), Journal: journal})
	must(t, err)
	defer sup.Close()
	err = sup.ResumeFromJournal(context.Background())
	if !errors.Is(err, ErrJournalCorrupt) {
		t.Fatalf("ResumeFromJournal: %v, want ErrJournalCorrupt", err)
	}
	if _, serr := os.Stat(journal); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("corrupt journal still in place: %v", serr)
	}
	matches, _ := filepath.Glob(journal + ".corrupt-*")
	if len(matches) != 1 || !strings.Contains(err.Error(), matches[0]) {
		t.Fatalf("quarantined copies %v; error %q should name it", matches, err)
	}
	if b, _ := os.ReadFile(matches[0]); string(b) != "{not json" {
		t.Fatalf("quarantined content %q", b)
	}
}

// startHolder starts a child that only stays alive (TC_MODE=hold) and
// returns once it reported.
func startHolder(t *testing.T) *exec.Cmd {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_ROLE=child", "TC_MODE=hold", "TC_OUT="+out)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, "the child's marker", func() bool { _, err := os.Stat(out); return err == nil })
	return cmd
}
