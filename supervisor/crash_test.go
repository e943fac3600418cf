//go:build handoff_crashpoints

package supervisor

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proc"
)

// Crash points kill a daemon at a chosen step (HANDOFF_CRASH_AT); the
// supervisor must leave a serving system behind by itself or with one cold
// start of the known-good binary, and no queued connection may be refused.
func TestIncumbentCrashPoints(t *testing.T) {
	tests := []struct {
		point      string
		wantCommit bool
		holding    bool // killed holding the connections its drain stopped
	}{
		{"incumbent-before-drain", false, false},
		{"incumbent-after-drain", false, true},
		{"incumbent-before-seal", false, true},
		{"incumbent-after-seal", false, true},
		{"incumbent-on-commit", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.point, func(t *testing.T) {
			checkLeaks(t)
			c := newCluster(t, Config{}, "HANDOFF_CRASH_AT="+tc.point)
			l := startLoad(t, c.addr)
			if tc.point == "incumbent-before-drain" {
				l.kills = 1 // killed while serving: a connection it accepted may be reset
			}
			if _, _, err := request(c.addr, "w"); err != nil {
				t.Fatal(err)
			}
			inc := c.servingPID()
			out := c.handoff("HANDOFF_CRASH_AT=")
			if out.Committed != tc.wantCommit {
				t.Fatalf("committed=%v (%s), want %v", out.Committed, out.AbortReason, tc.wantCommit)
			}
			if tc.holding {
				// Killed after its drain stopped the connections it had
				// accepted and before it sent them: they lived only in
				// it (ARCHITECTURE.md, the ownership table), and exactly
				// those may be reset.
				lines, held := daemonEvents(t, c.dir, "stopped", inc)
				if lines != 1 {
					t.Fatalf("incumbent %d logged %d drains that stopped connections, want 1", inc, lines)
				}
				l.kills = held
			}
			if !tc.wantCommit {
				// The incumbent died: the supervisor reports it, and a cold
				// start of the known-good binary serves the queued connections.
				select {
				case ex := <-c.sup.IncumbentExits():
					if ex.State != nil && ex.State.Success() {
						t.Fatalf("exit %v, want a kill", ex.State)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("no IncumbentExits notification")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if _, err := c.sup.ColdStart(ctx, c.spec()); err != nil {
					t.Fatal(err)
				}
			}
			if out := c.handoff(); !out.Committed {
				t.Fatalf("handoff after recovery: %s", out.AbortReason)
			}
			c.verify(l)
		})
	}
}

// testSup is a supervisor process (testSupervisor) driven over its stdin
// and stdout.
type testSup struct {
	t   *testing.T
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startTestSupervisor(t *testing.T, dir, mode string, env ...string) *testSup {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"HANDOFF_TEST_ROLE=supervisor", "TS_DIR=" + dir, "TS_MODE=" + mode}, env...)...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	must(t, err)
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	s := &testSup{t: t, cmd: cmd, in: in, out: bufio.NewScanner(out)}
	t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	return s
}

// answer reads the supervisor's next line, bounded in time.
func (s *testSup) answer(want string) []string {
	s.t.Helper()
	line := make(chan string, 1)
	go func() {
		if s.out.Scan() {
			line <- s.out.Text()
		}
		close(line)
	}()
	select {
	case l, ok := <-line:
		f := strings.Fields(l)
		if !ok || len(f) == 0 || f[0] != want {
			s.t.Fatalf("supervisor said %q, want %q", l, want)
		}
		return f
	case <-time.After(90 * time.Second):
		s.cmd.Process.Kill()
		s.t.Fatalf("supervisor did not say %q in time", want)
		return nil
	}
}

func (s *testSup) tell(cmd string) {
	s.t.Helper()
	if _, err := io.WriteString(s.in, cmd+"\n"); err != nil {
		s.t.Fatal(err)
	}
}

// daemonsOf lists the live (not zombie) test daemons of data directory dir.
func daemonsOf(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || isZombie(pid) {
			continue
		}
		vars := strings.Split(string(env), "\x00")
		if slices.Contains(vars, "HANDOFF_TEST_ROLE=daemon") && slices.Contains(vars, "TD_DATA="+dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// The supervisor process itself is killed at each of its crash points. A
// new supervisor process recovers with ResumeFromJournal: one daemon (the
// old incumbent) serves and holds the lock, no successor is left, a client
// dialling all along sees no refused or reset connection, no two daemons
// ever wrote, and a following handoff commits. In the last case the test
// kills the supervisor while a hung successor holds the lock: the orphan
// must be killed before the incumbent can retake the lock and answer.
func TestSupervisorCrashPoints(t *testing.T) {
	tests := []struct {
		name     string
		point    string   // HANDOFF_CRASH_AT of the supervisor
		succEnv  []string // knobs of the successor
		killHeld bool     // the test kills the supervisor once the successor holds the lock
	}{
		{"supervisor-after-successor-hello", "supervisor-after-successor-hello", nil, false},
		{"supervisor-after-drained", "supervisor-after-drained", nil, false},
		{"supervisor-after-sealed", "supervisor-after-sealed", nil, false},
		{"supervisor-before-commit", "supervisor-before-commit", nil, false},
		{"killed while a hung successor holds the lock", "", []string{"TD_HANG_AT=before-ready"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			dir := shortDir(t)
			data := filepath.Join(dir, "data")
			must(t, os.Mkdir(data, 0o755))
			t.Cleanup(func() {
				for _, pid := range daemonsOf(data) {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			})
			sup1 := startTestSupervisor(t, dir, "start", "HANDOFF_CRASH_AT="+tc.point)
			f := sup1.answer("ready")
			addr, incPID := f[1], atoi(t, f[2])
			probe := startLockProber(t, data)
			l := startLoad(t, addr)
			if _, _, err := request(addr, "w"); err != nil {
				t.Fatal(err)
			}
			sup1.tell(strings.Join(append([]string{"handoff", "v2"}, tc.succEnv...), " "))
			if tc.killHeld {
				waitFor(t, "the successor to hold the lock", func() bool {
					h := lockHolders(lockFileInode(t, data))
					return len(h) == 1 && h[0] != incPID
				})
				sup1.cmd.Process.Kill()
			}
			err := sup1.cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the supervisor ended with %v, want SIGKILL (%s)", err, tc.name)
			}
			rec, ok, err := readJournal(filepath.Join(dir, "journal"))
			if err != nil || !ok || rec.SuccessorPID == 0 {
				t.Fatalf("journal after the crash: %+v %v %v", rec, ok, err)
			}

			sup2 := startTestSupervisor(t, dir, "resume")
			f = sup2.answer("resumed")
			if pid := atoi(t, f[1]); pid != incPID || len(f) < 3 || f[2] != "tcp" {
				t.Fatalf("resumed with %v, want incumbent %d and listener tcp", f, incPID)
			}
			if pids := daemonsOf(data); len(pids) != 1 || pids[0] != incPID {
				t.Fatalf("daemons alive after the resume: %v, want only %d (successor was %d)", pids, incPID, rec.SuccessorPID)
			}
			if _, pid, err := request(addr, "w"); err != nil || pid != incPID {
				t.Fatalf("write after the resume served by %d (%v), want %d", pid, err, incPID)
			}
			if err := holdsLockPID(data, incPID); err != nil {
				t.Fatal(err)
			}
			sup2.tell("handoff v2")
			f = sup2.answer("outcome")
			if f[1] != "true" {
				t.Fatalf("handoff after the resume: %v", f)
			}
			newPID := atoi(t, f[2])
			if _, pid, err := request(addr, "w"); err != nil || pid != newPID {
				t.Fatalf("write after the handoff served by %d (%v), want %d", pid, err, newPID)
			}
			l.check(t)
			verifyData(t, data, l, probe)
			sup2.tell("stop")
			if err := sup2.cmd.Wait(); err != nil {
				t.Fatalf("supervisor stop: %v", err)
			}
		})
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// isZombie reports whether pid is gone or a zombie.
func isZombie(pid int) bool {
	st, err := proc.ReadStat(pid)
	return err != nil || st.State == 'Z'
}
