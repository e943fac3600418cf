package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// fdCount is the number of open descriptors of pid.
func fdCount(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	return len(names), err
}

// rssBytes is VmRSS of pid, from /proc/PID/status.
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmRSS (a zombie?)", pid)
}

// procStat is what the soak reads from /proc/PID/stat.
type procStat struct {
	pid   int
	comm  string
	state byte
	ppid  int
}

// readStat parses /proc/PID/stat; comm may hold spaces and parentheses,
// so the fields after it are found from the last ')'.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(pid, b)
}

func parseStat(pid int, b []byte) (procStat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no (comm)", pid)
	}
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: ppid: %w", pid, err)
	}
	return procStat{pid: pid, comm: string(b[open+1 : end]), state: f[0][0], ppid: ppid}, nil
}

// procScan is one pass over /proc.
type procScan struct {
	zombies []int // children of the supervisor in state Z
	kvd     int   // live processes running one of the soak's kvd binaries
	kvdPIDs []int
}

// scanProcs finds the supervisor's zombie children and the live kvd
// processes of this soak: children of the supervisor, or processes named
// like the soak's binaries, whose executable is one of them (other
// sessions may run kvd too).
func scanProcs(supPID int, kvdBins []string) (procScan, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return procScan{}, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return procScan{}, err
	}
	comms := map[string]bool{}
	for _, b := range kvdBins {
		comms[truncComm(filepath.Base(b))] = true
	}
	var s procScan
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // gone meanwhile
		}
		if st.state == 'Z' {
			if st.ppid == supPID {
				s.zombies = append(s.zombies, pid)
			}
			continue
		}
		if st.ppid != supPID && !comms[st.comm] {
			continue
		}
		exe, err := os.Readlink("/proc/" + n + "/exe")
		if err != nil {
			continue
		}
		exe = strings.TrimSuffix(exe, " (deleted)")
		for _, b := range kvdBins {
			if exe == b {
				s.kvd++
				s.kvdPIDs = append(s.kvdPIDs, pid)
				break
			}
		}
	}
	return s, nil
}

// truncComm is a program name as /proc/PID/stat shows it (15 bytes).
func truncComm(name string) string {
	if len(name) > 15 {
		return name[:15]
	}
	return name
}

// metricsClient scrapes the supervisor's /metrics over one kept-alive
// connection.
type metricsClient struct {
	url string
	c   *http.Client
}

func newMetricsClient(addr string) *metricsClient {
	return &metricsClient{url: "http://" + addr + "/metrics", c: &http.Client{Timeout: 2 * time.Second}}
}

// scrape returns the unlabelled (or exactly labelled) samples named in
// want, by their name as written in the exposition (with labels).
func (m *metricsClient) scrape(ctx context.Context, want ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := m.c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("/metrics: status %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name := line[:i]
		for _, w := range want {
			if name == w {
				if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
					out[name] = v
				}
			}
		}
	}
	return out, sc.Err()
}
