// Package proc reads what the handoff processes need to know about each
// other from /proc and signals process groups.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// UserHZ is the unit of utime, stime and starttime in /proc/<pid>/stat:
// USER_HZ, 100 on every architecture Linux and Go share.
const UserHZ = 100

// Stat holds the fields of /proc/<pid>/stat that handoff uses.
type Stat struct {
	PID   int
	State byte // 'R', 'S', 'Z' (zombie), 'X' (dead), ...
	PPID  int
	PGRP  int
	// CPU is utime+stime of all threads.
	CPU time.Duration
	// Start is the start time in clock ticks since boot (field 22). Equal
	// pid and start time mean the same process.
	Start uint64
}

// ReadStat reads /proc/<pid>/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(pid, b)
}

// ParseStat parses the content of a /proc/<pid>/stat file.
func ParseStat(pid int, b []byte) (Stat, error) {
	// The command name (field 2) is in parentheses and may hold spaces and
	// parentheses itself: the fields resume after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 20 || f[0] == "" {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %d fields after the command name, want at least 20", pid, len(f))
	}
	st := Stat{PID: pid, State: f[0][0]}
	var nums [5]uint64
	for k, idx := range []int{1, 2, 11, 12, 19} { // ppid, pgrp, utime, stime, starttime
		v, err := strconv.ParseUint(f[idx], 10, 64)
		if err != nil {
			return Stat{}, fmt.Errorf("/proc/%d/stat: field %d: %w", pid, idx+3, err)
		}
		nums[k] = v
	}
	st.PPID, st.PGRP = int(nums[0]), int(nums[1])
	st.CPU = time.Duration(nums[2]+nums[3]) * time.Second / UserHZ
	st.Start = nums[4]
	return st, nil
}

// StartTime returns pid's start time (see Stat.Start), 0 if unknown.
func StartTime(pid int) uint64 {
	st, err := ReadStat(pid)
	if err != nil {
		return 0
	}
	return st.Start
}

// Same reports whether pid is alive (not a zombie) and started at start.
func Same(pid int, start uint64) bool {
	if pid <= 0 || start == 0 {
		return false
	}
	st, err := ReadStat(pid)
	return err == nil && st.Start == start && st.State != 'Z' && st.State != 'X'
}

// Alive reports whether a process pid exists (a zombie counts).
func Alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// Children returns the pids whose parent is ppid, zombies included.
func Children(ppid int) ([]int, error) {
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, p := range stats {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		if st, err := ParseStat(pid, b); err == nil && st.PPID == ppid {
			out = append(out, pid)
		}
	}
	return out, nil
}

// KillGroup sends sig to the process group led by pid and to pid itself
// (which may have left its group). Errors are ignored: the group may be gone.
func KillGroup(pid int, sig unix.Signal) {
	if pid <= 0 {
		return
	}
	unix.Kill(-pid, sig)
	unix.Kill(pid, sig)
}

// Started returns when pid started, from its start time and the boot time
// in /proc/stat (whole seconds since the epoch, so it is exact to about a
// second); ok is false if either cannot be read.
func Started(pid int) (t time.Time, ok bool) {
	start := StartTime(pid)
	if start == 0 {
		return time.Time{}, false
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, false
	}
	boot, ok := bootTime(string(b))
	if !ok {
		return time.Time{}, false
	}
	return boot.Add(time.Duration(start) * time.Second / UserHZ), true
}

// bootTime reads the "btime <seconds>" line of /proc/stat.
func bootTime(stat string) (time.Time, bool) {
	for _, line := range strings.Split(stat, "\n") {
		if rest, ok := strings.CutPrefix(line, "btime "); ok {
			secs, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil || secs <= 0 {
				return time.Time{}, false
			}
			return time.Unix(secs, 0), true
		}
	}
	return time.Time{}, false
}
