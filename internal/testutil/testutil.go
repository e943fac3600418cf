// Package testutil holds what the process-level tests of every package
// share: short directories for unix socket paths, bounded polling, fd and
// goroutine leak checks, a test logger.
package testutil

import (
	"flag"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// ShortDir returns a new directory whose paths fit in a unix socket
// address (t.TempDir's may not), removed when the test ends.
func ShortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ho")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// WaitFor polls cond every few milliseconds, failing the test after 10 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Must fails the test on a non-nil err.
func Must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// CheckLeaks checks for leaked goroutines after every other cleanup of the
// test has run (cleanups run last-registered first): call it first.
func CheckLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// CountFDs returns the number of open descriptors of this process.
func CountFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Logger logs to stderr when the tests run verbose or HANDOFF_TEST_LOG is
// set (a re-executed test binary, whose flags are not parsed, only the
// latter); otherwise it returns nil (the libraries then discard their logs).
func Logger() *slog.Logger {
	if (flag.Parsed() && testing.Verbose()) || os.Getenv("HANDOFF_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// TLogger logs through t.Log at debug level: shown for a failing test and
// with -v. It must not log after the test has ended.
func TLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// VerifyTestMain runs the tests of a package and then checks for leaked
// goroutines (for packages that check once, in TestMain, rather than per
// test with CheckLeaks).
func VerifyTestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
