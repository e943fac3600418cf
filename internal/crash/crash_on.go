//go:build handoff_crashpoints

// Package crash holds crash points for fault-injection tests. Built with
// the handoff_crashpoints tag, Point kills the process with SIGKILL when
// HANDOFF_CRASH_AT names it.
package crash

import (
	"os"
	"syscall"
)

// Enabled reports whether crash points are compiled in.
const Enabled = true

var at = os.Getenv("HANDOFF_CRASH_AT")

// Point kills this process with SIGKILL if HANDOFF_CRASH_AT equals name.
func Point(name string) {
	if at != "" && at == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
