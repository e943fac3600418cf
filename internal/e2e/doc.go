// Package e2e holds end-to-end tests of connection passing (protocol
// version 3) with the real programs: TestMain builds handoff-supervisor and
// examples/kvd with go build, and each test runs the supervisor from a
// configuration file, with kvd as its daemon on a loopback listener "http",
// and triggers handoffs through the supervisor's trigger socket.
//
// The tests are the acceptance tests of established connections
// surviving handoffs: a keep-alive load (wrk) through 25 handoffs, ten
// thousand idle connections through ten, no descriptor leak after a
// hundred handoffs passing a thousand connections each, and a client idle
// for longer than the drain grace (and than kvd's net/http timeouts)
// served on the same connection afterwards. Every client connection is a
// raw TCP connection, so a reconnect cannot hide.
//
// They start processes and run for tens of seconds: go test -short skips
// them. A test that needs wrk skips when it is missing, unless
// HANDOFF_TOOLS_REQUIRED=1, which makes it fail.
package e2e
