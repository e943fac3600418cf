package main

import (
	_ "embed"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// unitExample is a systemd unit for the supervisor (Type=notify-reload),
// shown by --help.
//
//go:embed handoff-supervisor.service.example
var unitExample string

// commandDoc is what a command's own usage says besides its flags.
type commandDoc struct {
	synopsis string // one line, naming every flag
	summary  string // one sentence
	exit     string // its exit statuses
}

// commandDocs holds every command that has flags, by flag set name.
var commandDocs = map[string]commandDoc{
	"run": {
		synopsis: "handoff-supervisor [run] --config FILE",
		summary:  "Supervise the daemon: bind the listeners (or take them from systemd), start the daemon, restart it when it dies, and hand off to a new binary on a trigger.",
		exit:     "Exit status: 0 after a stop by SIGTERM or SIGINT; 1 failure; 2 bad usage.",
	},
	"upgrade": {
		synopsis: "handoff-supervisor upgrade --config FILE [--binary PATH] [--timeout D]",
		summary:  "Ask the running supervisor for a handoff, wait for its outcome and print it in one line.",
		exit:     "Exit status: 0 committed; 1 rolled back, refused or failed; 2 bad usage; 3 no supervisor answers on trigger_socket.",
	},
	"status": {
		synopsis: "handoff-supervisor status --config FILE [--json]",
		summary:  "Print the running supervisor's phase, pids, build ids, uptimes and last handoff outcomes.",
		exit:     "Exit status: 0 success; 1 failure; 2 bad usage; 3 no supervisor answers on trigger_socket.",
	},
	"version": {
		synopsis: "handoff-supervisor version",
		summary:  "Print this binary's module version, the VCS revision it was built from (and whether the tree was modified) and its Go version.",
	},
}

// versionFlags defines the version command's flags: none but --help.
func versionFlags() *flag.FlagSet { return newFlagSet("version") }

// usageWidth is where command usage is wrapped.
const usageWidth = 80

// writeCommandUsage prints the usage of the command whose flags fs holds:
// its synopsis, summary, every flag and its exit statuses.
func writeCommandUsage(w io.Writer, fs *flag.FlagSet) error {
	doc := commandDocs[fs.Name()]
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s\n\n", doc.synopsis)
	b.WriteString(wrap(doc.summary, "", usageWidth))
	b.WriteString("\nFlags:\n")
	type row struct {
		name, usage string
		at          int // where the synopsis names it
	}
	var rows []row
	fs.VisitAll(func(f *flag.Flag) {
		placeholder, usage := flag.UnquoteUsage(f)
		name := "--" + f.Name
		if placeholder != "" {
			name += " " + strings.ToUpper(placeholder)
		}
		at := strings.Index(doc.synopsis, "--"+f.Name)
		if at < 0 {
			at = len(doc.synopsis)
		}
		rows = append(rows, row{name: name, usage: usage, at: at})
	})
	// In the synopsis' order; VisitAll's (by name) among the others.
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].at < rows[j].at })
	rows = append(rows, row{name: "-h, --help", usage: "print this help and exit"})
	col := 0
	for _, r := range rows {
		col = max(col, len(r.name))
	}
	indent := strings.Repeat(" ", 2+col+3)
	for _, r := range rows {
		first := fmt.Sprintf("  %-*s   ", col, r.name)
		b.WriteString(first + strings.TrimPrefix(wrap(r.usage, indent, usageWidth), indent))
	}
	if doc.exit != "" {
		b.WriteString("\n" + wrap(doc.exit, "", usageWidth))
	}
	b.WriteString("\nRun 'handoff-supervisor --help' for the configuration keys, signals, trigger\nprotocol, metrics and a systemd unit.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// wrap breaks s into lines of at most width columns (a longer word gets
// a line of its own), each starting with indent and ending in a newline.
func wrap(s, indent string, width int) string {
	var b strings.Builder
	line := indent
	for _, word := range strings.Fields(s) {
		if line != indent && len(line)+1+len(word) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if line != indent {
			line += " "
		}
		line += word
	}
	b.WriteString(line + "\n")
	return b.String()
}

// helpText documents every command, flag, configuration key, signal,
// the trigger protocol and the metrics.
var helpText = `handoff-supervisor holds a daemon's listening sockets, starts the daemon,
restarts it when it dies, and replaces its binary without refusing a
connection or losing an acknowledged write (a "handoff"). A handoff that does
not commit is rolled back: the old binary keeps serving.

Usage:
  handoff-supervisor [run] --config FILE
  handoff-supervisor upgrade --config FILE [--binary PATH] [--timeout D]
  handoff-supervisor status --config FILE [--json]
  handoff-supervisor version | --version
  handoff-supervisor --help | help [COMMAND] | COMMAND --help

Commands:
  run       (the default) Bind the listeners, or take them from systemd socket
            activation, start the daemon and supervise it, and serve the
            trigger socket. Logs go to stderr.
              --config FILE   the configuration file (required)
  upgrade   Ask the running supervisor (over trigger_socket) for a handoff and
            print its outcome in one line: "committed: handoff ID, now serving
            pid PID, build B (...)", "rolled back: REASON (handoff ID)", or
            the supervisor's "err: MESSAGE" when no handoff ran. Exits 0 only
            if the handoff committed.
              --config FILE   the configuration file (required)
              --binary PATH   hand off to PATH instead of the configured binary;
                              it must be binary or one of allowed_binaries
              --timeout D     how long to wait for the outcome, e.g. 3m
                              (default: 2 x deadline_secs + 30s)
  status    Print the running supervisor's phase, pids, build ids, uptimes and
            last handoff outcomes.
              --config FILE   the configuration file (required)
              --json          print one JSON object instead
  version   Print the module version, the VCS revision (and "modified" if the
            tree had local changes) when the build recorded them, and the Go
            version.

Exit status: 0 success; 1 failure (including a handoff that rolled back);
2 bad usage; 3 (upgrade, status) no supervisor answers on trigger_socket:
its socket file does not exist or nothing listens on it.

Configuration (TOML; unknown keys and wrong types are errors that name the
key and the line):
  control_socket    (required) absolute path of the unix socket on which the
                    daemon listens for the supervisor; created 0600. At most
                    94 bytes; its directory must exist.
  trigger_socket    (required) absolute path of the supervisor's trigger
                    socket; created 0600. At most 97 bytes; its directory
                    must exist.
                    The run command refuses to start when anything but a
                    socket is at either path (a stale socket is replaced).
                    No two of the sockets, the journal, the unix listeners
                    and the configuration file may share a path.
  binary            (required) absolute path of the daemon's binary; what
                    run starts and what SIGHUP and a plain upgrade hand off to.
                    Symlinks are resolved when it is started.
  args              arguments for the daemon (after the program name).
                    Default: none.
  env               extra environment for the daemon, as "KEY=value" strings,
                    added to the supervisor's own. Default: none.
  drain_grace_secs  how long the old daemon may take to drain (seconds, may be
                    fractional, at least 0.001). Default: 25. Must be below
                    deadline_secs.
  deadline_secs     bound on a whole handoff, and on stopping the daemon at
                    SIGTERM. Default: 60.
  journal           absolute path of the state journal. With it, a restarted
                    supervisor finds and adopts a daemon that outlived the
                    previous one instead of starting another. Replaced
                    through a temporary file in its directory, which the run
                    command checks it can write before it starts.
                    Default: none.
  allowed_binaries  absolute paths that upgrade --binary may name, besides
                    binary. Compared after resolving symlinks. Default: none.
  allowed_uids      user ids, besides the supervisor's own and root's, that may
                    use the trigger socket: the socket file is mode 0600
                    plus a POSIX access ACL granting exactly these users
                    read and write (ls shows the ACL mask as group rw; they
                    also need search permission on its directory). The supervisor refuses to start if the
                    filesystem of trigger_socket does not take ACLs.
                    Default: none.
  metrics_addr      host:port for Prometheus metrics at /metrics.
                    Default: none (no metrics server).
  log_format        "text" or "json". Default: "text".
  [[listeners]]     one table per listening socket, passed to the daemon in
                    order (fd 3, 4, ...) with LISTEN_FDS and LISTEN_FDNAMES:
    name            (required) unique name: printable ASCII without spaces,
                    ':', ',' or '='. Matched against systemd's
                    FileDescriptorName= under socket activation.
    addr            (required) "host:port" or "tcp:host:port" (TCP),
                    "udp:host:port", "unix:/abs/path" or "unixgram:/abs/path".
                    A stale unix socket file is removed before binding only if
                    nothing answers on it; socket files are never removed by
                    the supervisor afterwards.

Example:
  control_socket   = "/run/my-daemon/handoff.sock"
  trigger_socket   = "/run/my-daemon/handoff.trigger"
  binary           = "/usr/local/bin/my-daemon"
  args             = ["--data", "/var/lib/my-daemon"]
  drain_grace_secs = 25
  deadline_secs    = 60
  journal          = "/var/lib/my-daemon/handoff.journal"
  allowed_binaries = ["/usr/local/bin/my-daemon-v2"]
  metrics_addr     = "127.0.0.1:9464"

  [[listeners]]
  name = "http"
  addr = "0.0.0.0:8080"

Signals (run):
  SIGHUP           hand off to the configured binary (systemctl reload).
  SIGTERM, SIGINT  stop the daemon gracefully (it drains), then exit 0. The
                   stop, a running handoff included (it is cancelled and rolls
                   back), is bounded by deadline_secs from the signal: then,
                   or at a second signal, every daemon is killed.
  SIGUSR2          re-execute the supervisor's own binary in place: same pid,
                   same listening sockets (never closed), same daemon. Deferred
                   while a handoff runs. Refused, with the reason logged and in
                   STATUS=, when the configuration file no longer loads, a
                   binary is missing, or the file changes [[listeners]] or
                   control_socket (those need a full restart).

If the daemon exits outside a handoff, the supervisor starts the last
known-good binary (the file that last started or committed, held open from
just before its start; for a #! script, the script) on the same sockets, so connections queued meanwhile are served. If the file at
its path was replaced since, the held file is started (through
/proc/<pid>/fd/<n>, also its argv[0]), never the untested one. Restarts back off from 100ms,
doubling to 10s; a daemon that ran 30s resets the backoff.

Trigger protocol (trigger_socket): send one line, read one line.
  handoff             hand off to binary
  handoff /abs/path   hand off to that binary (binary or allowed_binaries)
  status              the status as "ok: " followed by one JSON object
Answers: "ok: id=ID committed=true|false pid=PID build_id="B" accept_gap=D library_overhead=D passed_conns=N reason="R""
or "err: MESSAGE". Lines over 4096 bytes, and clients that send no line within
5s, get an err: and are disconnected. Only the supervisor's user, root and
allowed_uids are served (checked with SO_PEERCRED); others get
"err: permission denied".

systemd: works as Type=notify-reload (systemd 253 and later): READY=1 once the
daemon serves, RELOADING=1 with MONOTONIC_USEC when a handoff starts and
READY=1 when it ends, EXTEND_TIMEOUT_USEC while a handoff makes progress,
STOPPING=1, and STATUS= lines. With older systemd (236 to 252), use Type=notify
with ExecReload=/bin/kill -HUP $MAINPID and no ReloadSignal= (the source's
handoff-supervisor-notify.service.example): the same notifications are sent
and understood, but systemctl reload may return before the handoff has ended;
upgrade waits for its outcome. Socket activation: sockets passed with
LISTEN_FDS are matched to [[listeners]] by name (LISTEN_FDNAMES); the others
are bound.

Metrics (metrics_addr, /metrics):
  handoff_handoffs_total{outcome="committed|rolled_back"}  handoffs finished
  handoff_rollbacks_total                 handoffs rolled back
  handoff_seal_failures_total             rollbacks because the seal failed
  handoff_duration_seconds{outcome}       whole handoffs (histogram)
  handoff_warm_up_seconds                 the new daemon's warm-up, before the drain (histogram)
  handoff_drain_duration_seconds          the old daemon's drain (histogram)
  handoff_seal_duration_seconds           the old daemon's seal (histogram)
  handoff_begin_to_ready_seconds          the new daemon's start (histogram)
  handoff_accept_gap_seconds              time nobody accepted (histogram)
  handoff_daemon_restarts_total           restarts after the daemon exited
  handoff_daemon_start_failures_total     restarts that failed (retried)
  handoff_in_progress                     1 while a handoff runs
  plus the Go runtime's and the process's standard metrics.

A systemd unit (Type=notify-reload, systemd 253 and later; see above for
older systemd):

` + unitExample
