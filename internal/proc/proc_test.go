//go:build linux

package proc

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// statLine builds a /proc/<pid>/stat line: pid (comm) state ppid pgrp, then
// the fields up to starttime (22) with utime (14) and stime (15) set, then
// the rest of what the kernel writes.
func statLine(pid, comm, state, ppid, pgrp, utime, stime, start string) string {
	f := []string{pid, "(" + comm + ")", state, ppid, pgrp}
	f = append(f, "42", "0", "-1", "4194560", "110", "0", "0", "0") // session .. cmajflt (6-13)
	f = append(f, utime, stime)                                     // 14, 15
	f = append(f, "0", "0", "20", "0", "1", "0")                    // cutime .. itrealvalue (16-21)
	f = append(f, start)                                            // 22
	f = append(f, "5984256", "187", "18446744073709551615", "0", "0", "0", "0", "0", "0", "0", "0", "0", "17", "3", "0", "0", "0", "0", "0")
	return strings.Join(f, " ") + "\n"
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name string
		line string
		want Stat // PID is the pid argument, 42
		err  bool
	}{
		{name: "plain", line: statLine("42", "cat", "S", "1", "42", "150", "50", "98765"),
			want: Stat{PID: 42, State: 'S', PPID: 1, PGRP: 42, CPU: 2 * time.Second, Start: 98765}},
		{name: "comm with spaces and parentheses", line: statLine("42", "a) b (c) Z 9 9", "Z", "7", "3", "1", "2", "5"),
			want: Stat{PID: 42, State: 'Z', PPID: 7, PGRP: 3, CPU: 30 * time.Millisecond, Start: 5}},
		{name: "comm that is only a parenthesis", line: statLine("42", ")", "R", "2", "2", "0", "0", "1"),
			want: Stat{PID: 42, State: 'R', PPID: 2, PGRP: 2, Start: 1}},
		{name: "empty comm", line: statLine("42", "", "X", "0", "0", "0", "0", "0"),
			want: Stat{PID: 42, State: 'X'}},
		{name: "no trailing newline, exactly 22 fields",
			line: strings.Join(strings.Fields(statLine("42", "d", "D", "1", "1", "0", "100", "7"))[:22], " "),
			want: Stat{PID: 42, State: 'D', PPID: 1, PGRP: 1, CPU: time.Second, Start: 7}},
		{name: "empty", line: "", err: true},
		{name: "no command name", line: "42 cat S 1 42 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 5 0 0", err: true},
		{name: "cut short after the command name", line: "42 (cat) S 1 42 0 -1", err: true},
		{name: "one field short of starttime",
			line: strings.Join(strings.Fields(statLine("42", "cat", "S", "1", "42", "0", "0", "9"))[:21], " "), err: true},
		{name: "nothing after the command name", line: "42 (cat)", err: true},
		{name: "garbled ppid", line: statLine("42", "cat", "S", "x1", "42", "0", "0", "9"), err: true},
		{name: "negative utime", line: statLine("42", "cat", "S", "1", "42", "-1", "0", "9"), err: true},
		{name: "garbled starttime", line: statLine("42", "cat", "S", "1", "42", "0", "0", "9z"), err: true},
		{name: "binary garbage", line: "\x00\xff)\x00", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStat(42, []byte(tc.line))
			if tc.err {
				if err == nil {
					t.Fatalf("ParseStat(%q) = %+v, want an error", tc.line, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseStat(%q): %v", tc.line, err)
			}
			if got != tc.want {
				t.Fatalf("ParseStat(%q) = %+v, want %+v", tc.line, got, tc.want)
			}
		})
	}
}

func TestReadStatSelf(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != os.Getpid() || st.PPID != os.Getppid() || st.State == 'Z' || st.State == 'X' || st.State == 0 || st.Start == 0 {
		t.Fatalf("ReadStat(self) = %+v; pid %d, ppid %d", st, os.Getpid(), os.Getppid())
	}
	if !Same(os.Getpid(), st.Start) || Same(os.Getpid(), st.Start+1) || StartTime(os.Getpid()) != st.Start {
		t.Fatalf("Same/StartTime disagree with start time %d", st.Start)
	}
	if !Alive(os.Getpid()) {
		t.Fatal("this process is not alive")
	}
}

func TestChildrenAndKillGroup(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep command")
	}
	cmd := exec.Command(sleep, "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	kids, err := Children(os.Getpid())
	if err != nil || !slices.Contains(kids, pid) {
		t.Fatalf("Children(self) = %v, %v; want it to hold %d", kids, err, pid)
	}
	if st, err := ReadStat(pid); err != nil || st.PPID != os.Getpid() || st.PGRP != pid {
		t.Fatalf("ReadStat(child) = %+v, %v", st, err)
	}
	KillGroup(pid, syscall.SIGKILL)
	cmd.Wait() // the child is reaped: no longer there
	if Alive(pid) {
		t.Fatalf("pid %d still alive after KillGroup", pid)
	}
	KillGroup(0, syscall.SIGKILL)  // no-op: must not signal our own group
	KillGroup(-1, syscall.SIGKILL) // no-op: must not signal every process
}

func FuzzParseStat(f *testing.F) {
	f.Add(42, []byte(statLine("42", "cat", "S", "1", "42", "150", "50", "98765")))
	f.Add(42, []byte(statLine("42", "a) b (c) Z 9 9", "Z", "7", "3", "1", "2", "5")))
	f.Add(1, []byte(statLine("1", "", "R", "0", "0", "0", "0", "0")))
	f.Add(42, []byte("42 (cat) S 1 42 0 -1"))
	f.Add(42, []byte("42 (cat)"))
	f.Add(42, []byte(""))
	f.Add(42, []byte("))))"))
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		f.Add(os.Getpid(), b)
	}
	f.Fuzz(func(t *testing.T, pid int, b []byte) {
		st, err := ParseStat(pid, b)
		if err != nil {
			if st != (Stat{}) {
				t.Fatalf("error %v with a non-zero Stat %+v", err, st)
			}
			return
		}
		if st.PID != pid {
			t.Fatalf("PID %d, want %d", st.PID, pid)
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			t.Fatalf("parsed %q, which has no ')': %+v", b, st)
		}
		rest := strings.Fields(string(b[i+1:]))
		if len(rest) < 20 || rest[0][0] != st.State {
			t.Fatalf("parsed %q into %+v", b, st)
		}
		// More fields after the known ones change nothing.
		again, err := ParseStat(pid, append(slices.Clip(b), " 1 2 3"...))
		if err != nil || again != st {
			t.Fatalf("with fields appended: %+v, %v; want %+v", again, err, st)
		}
	})
}

func TestParseFlockHolders(t *testing.T) {
	in := `1: POSIX  ADVISORY  WRITE 77 fd:01:1234567 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4243 fd:01:1234567 0 EOF
3: FLOCK  ADVISORY  WRITE 5000 fd:01:12345670 0 EOF
4: FLOCK  ADVISORY  WRITE 4242 08:02:1234567 0 EOF
5: FLOCK  ADVISORY  WRITE -1 fd:01:1234567 0 EOF
garbage
`
	got := parseFlockHolders(bufio.NewScanner(strings.NewReader(in)), 1234567)
	if !slices.Equal(got, []int{4242}) {
		t.Fatalf("holders %v, want [4242]", got)
	}
}

func TestFlockHoldersSeesThisProcess(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "lock")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if got := FlockHolders(st.Ino); !slices.Contains(got, os.Getpid()) {
		t.Fatalf("holders %v, want this process %d among them", got, os.Getpid())
	}
}

func TestStartedIsWhenThisProcessStarted(t *testing.T) {
	got, ok := Started(os.Getpid())
	if !ok {
		t.Fatal("Started of this process: not known")
	}
	// This test runs within seconds of the test binary's start; btime
	// has whole seconds, the start time hundredths.
	if age := time.Since(got); age < -2*time.Second || age > 10*time.Minute {
		t.Fatalf("this process started %v ago, by Started", age)
	}
	if _, ok := bootTime("cpu 1 2 3\nbtime x\n"); ok {
		t.Fatal("bootTime accepted a bad btime")
	}
	if bt, ok := bootTime("cpu 1\nbtime 1700000000\n"); !ok || bt.Unix() != 1700000000 {
		t.Fatalf("bootTime: %v %v", bt, ok)
	}
}
