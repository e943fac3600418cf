package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The request protocol: one line per fresh connection. The client sends
// request, the server answers reply and closes the connection.
const (
	request = "ping\n"
	reply   = "pong\n"
	// connTimeout bounds each connection on both sides, so waiting for
	// in-flight connections is bounded too.
	connTimeout = 5 * time.Second
)

// server is the daemon's request loop, shared by the library daemon and the
// baseline one: it accepts on one listener and answers each connection.
type server struct {
	mu     sync.Mutex
	ln     net.Listener   // nil while not accepting
	wg     sync.WaitGroup // the accept loop and every open connection
	served atomic.Uint64  // requests answered
}

// start accepts on ln until stopAccepting.
func (s *server) start(ln net.Listener) {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					fmt.Fprintf(os.Stderr, "handoff-bench[%d]: accept: %v\n", os.Getpid(), err)
				}
				return
			}
			s.wg.Add(1) // the accept loop's own count is held: no race with wait
			go s.handle(c)
		}
	}()
}

func (s *server) handle(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	c.SetDeadline(time.Now().Add(connTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != request {
		return
	}
	if _, err := c.Write([]byte(reply)); err == nil {
		s.served.Add(1)
	}
}

// accepting reports whether the accept loop runs.
func (s *server) accepting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ln != nil
}

// stopAccepting closes this process's listener descriptor; the accept loop
// ends. Connections still in the kernel's accept queue stay there as long
// as another process holds the socket.
func (s *server) stopAccepting() error {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	s.mu.Unlock()
	if ln == nil {
		return nil
	}
	if err := ln.Close(); err != nil {
		return fmt.Errorf("close listener: %w", err)
	}
	return nil
}

// wait returns once the accept loop has ended and every accepted
// connection is answered; connTimeout bounds it.
func (s *server) wait() { s.wg.Wait() }
