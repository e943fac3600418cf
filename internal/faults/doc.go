// Package faults holds only tests: the resource-fault set of issue 12.
// They build the real kvd and handoff-supervisor binaries with go build,
// run kvd under the supervisor from a TOML config, and put the processes
// through what a machine does to them: a data directory, a journal
// directory or a control-socket directory that is full (small tmpfs
// mounts), a data directory that turns read-only (ext4 on a loop device
// remounting itself read-only on an error), descriptors running out in
// the supervisor, the incumbent or the successor (prlimit, ulimit), and
// fsync failing in the drain or the seal (kvd --fail-fsync-at).
//
// Each test checks that the fault is refused or the handoff aborted with
// a reason naming it, that no acknowledged write is lost (on the live
// daemon, and with kvd --dump once the supervisor has stopped), and that
// the daemon serves as before.
//
// Mounting needs root: without it, or where a mount fails, the tests are
// skipped with the reason, unless FAULTS_REQUIRED is set: then they fail.
// .ci/run sets it where it runs as root and a tmpfs mounts. FAULTS_KVD
// names a kvd binary to use instead of building one (to run the set
// against another revision).
package faults
