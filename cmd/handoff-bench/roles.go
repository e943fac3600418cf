package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// The bench re-executes itself; the environment says in which role.
const (
	envRole      = "HANDOFF_BENCH_ROLE"
	envDir       = "HANDOFF_BENCH_DIR"       // work directory (supervisor, daemon)
	envAddr      = "HANDOFF_BENCH_ADDR"      // address to bind (plain)
	envReusePort = "HANDOFF_BENCH_REUSEPORT" // "1": bind with SO_REUSEPORT (plain)
	envSpawn     = "HANDOFF_BENCH_SPAWN"     // JSON spawnConfig: the daemon to supervise instead of roleDaemon (supervisor)

	roleSupervisor = "supervisor" // the embedded supervisor.Supervisor, driven over stdin/stdout
	roleDaemon     = "daemon"     // the daemon the supervisor hands off
	rolePlain      = "plain"      // the same daemon without the library (baselines)
	// The keep-alive mode's daemons: an HTTP/1.1 server on httphandoff
	// under handoff.Run, and the same server without the library.
	roleHTTPDaemon = "http-daemon"
	roleHTTPPlain  = "http-plain"
)

// runRole runs one re-executed role and returns the exit code.
func runRole(role string) int {
	dir, addr, reusePort, spawn := os.Getenv(envDir), os.Getenv(envAddr), os.Getenv(envReusePort) == "1", os.Getenv(envSpawn)
	// Children of this process must not inherit the role.
	for _, k := range []string{envRole, envDir, envAddr, envReusePort, envSpawn} {
		os.Unsetenv(k)
	}
	var err error
	switch role {
	case roleSupervisor:
		// No signal handler: the bench drives it through stdin, and
		// closing stdin stops it. It leads its own process group, so a
		// terminal's Ctrl-C reaches only the bench.
		err = runSupervisor(context.Background(), dir, spawn, os.Stdin, os.Stdout)
	case roleDaemon, rolePlain, roleHTTPDaemon, roleHTTPPlain:
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		switch role {
		case roleDaemon:
			err = runDaemon(ctx, dir)
		case rolePlain:
			err = runPlain(ctx, addr, reusePort, os.NewFile(3, "report"))
		case roleHTTPDaemon:
			err = runHTTPDaemon(ctx, dir)
		case roleHTTPPlain:
			err = runHTTPPlain(ctx, addr, reusePort, os.NewFile(3, "report"))
		}
		stop()
	default:
		err = fmt.Errorf("unknown %s %q", envRole, role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "handoff-bench %s[%d]: %v\n", role, os.Getpid(), err)
		return 1
	}
	return 0
}
