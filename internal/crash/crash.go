//go:build !handoff_crashpoints

// Package crash holds crash points for fault-injection tests. Without the
// handoff_crashpoints build tag every point is a no-op the compiler removes.
package crash

// Point does nothing in normal builds.
func Point(string) {}

// Enabled reports whether crash points are compiled in.
const Enabled = false
