package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// The supervisor's descriptor budget. Go (since 1.19) raises its own soft
// RLIMIT_NOFILE at start to just under the hard limit (to hard-1, when the
// soft limit is lower) and gives processes it starts the soft limit it was
// started with back; only the hard limit is beyond its reach. The
// supervisor holds the listeners, the trigger and metrics sockets, the
// daemon's control connection and its binary; a handoff opens more.

// handoffFDs is about how many descriptors a handoff opens beyond those
// the supervisor holds between handoffs: the successor's control
// socketpair, its stdin and duplicates of stdout and stderr, the exec
// status pipe, a pidfd, the new binary held open, the journal's temporary
// file and its directory, and the trigger connection that asked. With one
// listener a handoff needed 10 (at RLIMIT_NOFILE 24 it committed, at 22 it
// could not start the successor); two to spare.
const handoffFDs = 12

// fdLimit is RLIMIT_NOFILE and how much of it is in use.
type fdLimit struct {
	soft, hard uint64
	open       uint64 // descriptors open below soft: a new one takes the lowest free number
}

// currentFDLimit reads RLIMIT_NOFILE and counts this process's open
// descriptors.
func currentFDLimit() (fdLimit, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fdLimit{}, fmt.Errorf("RLIMIT_NOFILE: %w", err)
	}
	l := fdLimit{soft: rl.Cur, hard: rl.Max}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return l, fmt.Errorf("count open descriptors: %w", err)
	}
	self := uint64(d.Fd()) // closed again below: not counted
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return l, fmt.Errorf("count open descriptors: %w", err)
	}
	for _, name := range names {
		if fd, err := strconv.ParseUint(name, 10, 64); err == nil && fd < l.soft && fd != self {
			l.open++
		}
	}
	return l, nil
}

// free is how many more descriptors this process may open.
func (l fdLimit) free() uint64 {
	if l.open >= l.soft {
		return 0
	}
	return l.soft - l.open
}

// lowFDLimitMsg is logged when a handoff could not run under the limit.
const lowFDLimitMsg = "RLIMIT_NOFILE is too low for a handoff to run"

// advice says what to raise when a handoff cannot run under l, or
// returns "" when it can.
func (l fdLimit) advice() string {
	if l.free() >= handoffFDs {
		return ""
	}
	need := l.open + handoffFDs
	if l.soft+1 < l.hard && need <= l.hard {
		return fmt.Sprintf("the supervisor holds %d descriptors and a handoff opens about %d more, but its soft limit is %d (lowered since it started: Go raised it to just under the hard limit %d then); raise the soft limit (prlimit)",
			l.open, handoffFDs, l.soft, l.hard)
	}
	return fmt.Sprintf("the supervisor holds %d descriptors of the %d its limit allows and a handoff opens about %d more: raise the hard limit (now %d) to at least %d (LimitNOFILE= in the unit, ulimit -n); "+
		"raising only the soft limit does not help, as Go raises it to just under the hard limit at start; the daemons start with the soft limit the supervisor was started with",
		l.open, l.soft, handoffFDs, l.hard, need+1)
}

// triggerConns is how many trigger connections to serve at once: half of
// what a handoff leaves free, within minTriggerConns and maxTriggerConns.
func (l fdLimit) triggerConns() int {
	room := uint64(0)
	if f := l.free(); f > handoffFDs {
		room = (f - handoffFDs) / 2
	}
	return int(min(max(room, minTriggerConns), maxTriggerConns))
}
