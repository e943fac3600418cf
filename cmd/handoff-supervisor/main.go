// Command handoff-supervisor holds a daemon's listening sockets, starts
// the daemon, restarts it when it dies and replaces its binary without
// dropping a connection, on a trigger (a unix socket, SIGHUP, or the
// upgrade subcommand). Run it with --help for the commands, flags,
// configuration keys, signals, metrics and a systemd unit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode prints err (unless the command already did) and picks the
// exit status: 0 success, 2 usage error, 1 anything else.
func exitCode(err error, stderr io.Writer) int {
	var ee *exitError
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "handoff-supervisor: %v\nRun 'handoff-supervisor --help' for usage.\n", err)
		return 2
	default:
		fmt.Fprintf(stderr, "handoff-supervisor: %v\n", err)
		return 1
	}
}

// usageError is a mistake on the command line.
type usageError struct {
	msg string
	err error // the flag package's error, if any
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
	case "version":
		if len(args) > 1 {
			return &usageError{msg: "version takes no arguments"}
		}
		_, err := fmt.Fprintf(stdout, "handoff-supervisor %s\n", version())
		return err
	case "help", "-h", "-help", "--help":
		_, err := io.WriteString(stdout, helpText)
		return err
	}
	if strings.HasPrefix(args[0], "-") {
		return runDaemon(ctx, args, stdout, stderr)
	}
	return &usageError{msg: fmt.Sprintf("unknown command %q", args[0])}
}

// newFlagSet returns a flag set that prints nothing itself: parseFlags
// turns its errors into usage errors.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseFlags parses args; --help prints the help text to stdout and ends
// the command successfully.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			io.WriteString(stdout, helpText)
			return &exitError{0}
		}
		return &usageError{msg: fs.Name(), err: err}
	}
	if fs.NArg() > 0 {
		return &usageError{msg: fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
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

// version is the module version of this binary, or the VCS revision it
// was built from when it has none, and the Go version.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown version)"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				v += " " + s.Value[:min(12, len(s.Value))]
			case s.Key == "vcs.modified" && s.Value == "true":
				v += "+dirty"
			}
		}
	}
	return v + " " + bi.GoVersion
}
