package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ, 100
// on every architecture Linux and Go share.
const userHZ = 100

// procStats are one process's figures from /proc.
type procStats struct {
	PID int   `json:"pid"`
	RSS int64 `json:"vm_rss_bytes"` // VmRSS
	HWM int64 `json:"vm_hwm_bytes"` // VmHWM: peak resident set
	// CPU is utime+stime of all threads, in steps of 1/userHZ.
	CPU time.Duration `json:"cpu_ns"`
	// Switches counts context switches (voluntary and not) of the live
	// threads: each wake-up of a thread that sleeps costs at least one.
	Switches int64 `json:"context_switches"`
}

func readProcStats(pid int) (procStats, error) {
	st := procStats{PID: pid}
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	status, err := readStatus(filepath.Join(dir, "status"))
	if err != nil {
		return st, err
	}
	st.RSS, st.HWM = status["VmRSS"]*1024, status["VmHWM"]*1024 // "kB"
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return st, fmt.Errorf("read stat: %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return st, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	for _, s := range f[11:13] {
		ticks, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return st, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		st.CPU += time.Duration(ticks) * time.Second / userHZ
	}
	tasks, err := filepath.Glob(filepath.Join(dir, "task", "*", "status"))
	if err != nil {
		return st, fmt.Errorf("threads of %d: %w", pid, err)
	}
	for _, t := range tasks {
		ts, err := readStatus(t)
		if err != nil {
			continue // the thread exited meanwhile
		}
		st.Switches += ts["voluntary_ctxt_switches"] + ts["nonvoluntary_ctxt_switches"]
	}
	return st, nil
}

// readStatus reads the numeric fields of a /proc status file.
func readStatus(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	m := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			m[k] = n
		}
	}
	return m, nil
}
