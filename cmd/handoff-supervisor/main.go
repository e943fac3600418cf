// Command handoff-supervisor holds a daemon's listening sockets, starts
// the daemon, restarts it when it dies and replaces its binary without
// dropping a connection, on a trigger (a unix socket, SIGHUP, or the
// upgrade subcommand). Run it with --help for the commands, flags,
// configuration keys, signals, metrics and a systemd unit, and with
// COMMAND --help for one command.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	os.Exit(exitCode(err, os.Stderr))
}

// Exit statuses.
const (
	exitOK           = 0
	exitFailure      = 1 // anything else, a handoff that rolled back included
	exitUsage        = 2
	exitNoSupervisor = 3 // nothing answers on the trigger socket
)

// exitCode prints err (unless the command already did) and picks the
// exit status.
func exitCode(err error, stderr io.Writer) int {
	var ee *exitError
	var ue *usageError
	var ns *noSupervisorError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		help := "handoff-supervisor --help"
		if ue.cmd != "" {
			help = "handoff-supervisor " + ue.cmd + " --help"
		}
		fmt.Fprintf(stderr, "handoff-supervisor: %v\nRun '%s' for usage.\n", err, help)
		return exitUsage
	case errors.As(err, &ns):
		fmt.Fprintf(stderr, "handoff-supervisor: %v\n%s\n", err, ns.hint())
		return exitNoSupervisor
	default:
		fmt.Fprintf(stderr, "handoff-supervisor: %v\n", err)
		return exitFailure
	}
}

// usageError is a mistake on the command line.
type usageError struct {
	msg string
	cmd string // the subcommand whose usage to point at, if any
	err error  // the flag package's error, if any
}

func (e *usageError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

func (e *usageError) Unwrap() error { return e.err }

// run dispatches to a subcommand; without one (or with a flag first) it is
// the run command.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{msg: "no command and no --config given"}
	}
	switch args[0] {
	case "run":
		return runDaemon(ctx, args[1:], stdout, stderr)
	case "upgrade":
		return runUpgrade(ctx, args[1:], stdout, stderr)
	case "status":
		return runStatus(ctx, args[1:], stdout, stderr)
	case "version", "-version", "--version":
		return runVersion(args[1:], stdout)
	case "help", "-h", "-help", "--help":
		return runHelp(ctx, args[1:], stdout, stderr)
	}
	if strings.HasPrefix(args[0], "-") {
		return runDaemon(ctx, args, stdout, stderr)
	}
	return &usageError{msg: fmt.Sprintf("unknown command %q", args[0])}
}

// runHelp prints the whole help, or with a command name that command's
// usage (help upgrade is upgrade --help).
func runHelp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) == 0:
		_, err := io.WriteString(stdout, helpText)
		return err
	case len(args) > 1:
		return &usageError{msg: "help takes at most one command name"}
	}
	if _, ok := commandDocs[args[0]]; !ok {
		return &usageError{msg: fmt.Sprintf("help: unknown command %q", args[0])}
	}
	err := run(ctx, []string{args[0], "--help"}, stdout, stderr)
	var ee *exitError
	if errors.As(err, &ee) && ee.code == exitOK {
		return nil
	}
	return err
}

// runVersion prints the version of this binary.
func runVersion(args []string, stdout io.Writer) error {
	if err := parseFlags(versionFlags(), args, stdout); err != nil {
		return err
	}
	_, err := fmt.Fprintf(stdout, "handoff-supervisor %s\n", version())
	return err
}

// newFlagSet returns a flag set that prints nothing itself: parseFlags
// turns its errors into usage errors.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseFlags parses args; -h or --help prints the command's usage to
// stdout and ends the command successfully.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			if err := writeCommandUsage(stdout, fs); err != nil {
				return err
			}
			return &exitError{exitOK}
		}
		return &usageError{msg: fs.Name(), cmd: fs.Name(), err: err}
	}
	if fs.NArg() > 0 {
		return &usageError{msg: fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0)), cmd: fs.Name()}
	}
	return nil
}

// loadConfigFlag loads the file named by --config.
func loadConfigFlag(path string) (*Config, error) {
	if path == "" {
		return nil, &usageError{msg: "--config is required"}
	}
	return loadConfig(path)
}

// version is this binary's module version, the VCS revision it was built
// from (and whether the tree had local changes) when the build recorded
// them, and the Go version.
func version() string {
	bi, _ := debug.ReadBuildInfo()
	return formatVersion(bi)
}

// formatVersion formats bi (nil: no build information) as
// "v1.2.3 (revision 0123abcd..., modified, go1.26.1)".
func formatVersion(bi *debug.BuildInfo) string {
	if bi == nil {
		return "(unknown version: the binary holds no build information) (" + runtime.Version() + ")"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var details []string
	var modified bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			details = append(details, "revision "+s.Value)
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if modified {
		details = append(details, "modified")
	}
	goVersion := bi.GoVersion
	if goVersion == "" {
		goVersion = runtime.Version()
	}
	details = append(details, goVersion)
	return v + " (" + strings.Join(details, ", ") + ")"
}
