package proc

import (
	"bufio"
	"os"
	"slices"
	"strconv"
	"strings"
)

// FlockHolders returns the pids that hold a flock on the file with inode
// ino, as /proc/locks lists them: the process that took each lock, which
// may have exited while a descriptor it passed on still holds it. Waiters
// are not holders. It returns nil when /proc/locks cannot be read.
func FlockHolders(ino uint64) []int {
	f, err := os.Open("/proc/locks")
	if err != nil {
		return nil
	}
	defer f.Close()
	return parseFlockHolders(bufio.NewScanner(f), ino)
}

// parseFlockHolders reads /proc/locks lines such as
//
//	1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF
//	1: -> FLOCK  ADVISORY  WRITE 4243 fd:01:1234567 0 EOF   (a waiter)
func parseFlockHolders(sc *bufio.Scanner, ino uint64) []int {
	var pids []int
	suffix := ":" + strconv.FormatUint(ino, 10)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[1] != "FLOCK" || !strings.HasSuffix(f[5], suffix) {
			continue
		}
		pid, err := strconv.Atoi(f[4])
		if err != nil || pid <= 0 {
			continue
		}
		if !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}
