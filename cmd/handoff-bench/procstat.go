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

	"github.com/handoff-go/handoff/internal/proc"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat.
const userHZ = proc.UserHZ

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
	stat, err := proc.ReadStat(pid)
	if err != nil {
		return st, fmt.Errorf("read stat: %w", err)
	}
	st.CPU = stat.CPU
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
