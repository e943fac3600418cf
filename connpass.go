package handoff

import "net"

// MaxConnState bounds the State of one PassedConn: 16 KiB.
const MaxConnState = 16 << 10

// PassedConn is an established client connection handed from one process
// to the next at a request boundary: the client sees a pause, never a
// close.
type PassedConn struct {
	// Listener is the address of the listener that accepted the
	// connection (its Addr().String()). The next process inherits the
	// same listening socket, whose address is the same, and routes the
	// connection to the protocol served there.
	Listener string
	// Conn is the connection, a *net.TCPConn or *net.UnixConn (anything
	// with SyscallConn; a TLS connection cannot be passed).
	Conn net.Conn
	// State is the daemon's own per-connection state, opaque to the
	// library: protocol state (a selected database, a client name) and
	// bytes read from the client and not consumed yet. At most
	// MaxConnState bytes.
	State []byte
}

// ConnPasser is implemented by a Drainable (a Service) whose established
// connections can be passed to the next process instead of being closed.
// Its Drain stops serving each connection at a request boundary (an idle
// one at once, a busy one right after its response) and keeps it, neither
// closing it nor shutting it down. The library then passes them: the
// successor serves them only after the commit; on an abort the incumbent
// gets them back. Bytes a client sends meanwhile wait in the kernel's
// receive buffer. The descriptors travel after the seal and after the
// commit, so passing many barely lengthens the accept gap; a passed
// connection itself waits until its successor took it.
//
// Without ConnPasser, or when the peers cannot pass connections (an older
// supervisor or successor, or no room for descriptors), connections are
// closed at a request boundary as before.
type ConnPasser interface {
	// PassConns is called once Drain returned nil. It returns at most max
	// of the connections Drain stopped serving, each with its state, and
	// closes the others as it would without passing (max is 0 when none
	// can be passed). The returned connections belong to the library:
	// the daemon must not read, write, close or shut them down.
	PassConns(max int) []PassedConn

	// AdoptConns serves connections as if just accepted, with their
	// state: in a successor once it serves (after Start), passed by its
	// predecessor, as they arrive, in several calls of up to 256; in an
	// incumbent after ResumeAfterAbort, the ones it passed for a handoff
	// that did not commit. They belong to the daemon from then on. The
	// calls come one after another, before the first Drain of this
	// process.
	AdoptConns(conns []PassedConn)
}
