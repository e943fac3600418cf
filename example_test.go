//go:build linux

package handoff_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/httphandoff"
)

// A daemon on the front door, started by hand: Run binds the listener it
// was not given, locks the data directory, opens, serves until ctx ends
// and shuts down. Under handoff-supervisor the same code is handed off.
func ExampleRun() {
	dir, err := os.MkdirTemp("", "data")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, stop := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	go func() {
		// A client: one request, then stop the daemon (as SIGTERM would).
		resp, err := http.Get("http://" + <-addr + "/")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Println(string(body))
		}
		stop()
	}()
	err = handoff.Run(ctx, handoff.Config{
		DataDir: dir,
		Listen:  map[string]string{"http": "127.0.0.1:0"},
		Open: func(_ context.Context, ls *handoff.InheritedListeners) (handoff.Service, error) {
			ln, err := ls.Listener("http")
			if err != nil {
				return nil, err
			}
			addr <- ln.Addr().String()
			return httphandoff.New(httphandoff.Config{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello") }),
				Close: func(context.Context) error {
					fmt.Println("state closed")
					return nil
				},
			}, ln)
		},
	})
	fmt.Println("Run:", err)
	// Output:
	// hello
	// state closed
	// Run: <nil>
}

func ExampleAcquireDataDirLock() {
	dir, err := os.MkdirTemp("", "data")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	lock, err := handoff.AcquireDataDirLock(dir)
	if err != nil {
		log.Fatal(err)
	}
	// A second holder is refused; the error names the holder's pid.
	_, err = handoff.AcquireDataDirLock(dir)
	var held *handoff.LockHeldError
	fmt.Println(errors.Is(err, handoff.ErrLockHeld), errors.As(err, &held) && held.HolderPID == os.Getpid())
	fmt.Println(lock.Release())
	// Output:
	// true true
	// <nil>
}

// The step API, for experts: what Run does, spelled out. It has no output
// to check: it is a main that needs its supervisor.
func ExampleDetectRole() {
	const dataDir = "/var/lib/mydb"
	ctx := context.Background()
	role, err := handoff.DetectRole()
	if err != nil {
		log.Fatal(err)
	}
	var inc *handoff.Incumbent
	var ls *handoff.InheritedListeners
	switch r := role.(type) {
	case *handoff.ColdStart: // started by hand, or cold-started by the supervisor
		lock, err := handoff.AcquireDataDirLockOrBreakStale(dataDir)
		if err != nil {
			log.Fatal(err)
		}
		// "": the control socket path the supervisor passed.
		if inc, err = handoff.BindColdStart("", lock); err != nil {
			log.Fatal(err)
		}
		ls = r.Inherited
	case *handoff.Successor: // spawned for a handoff
		h, err := r.Handshake("v2")
		if err != nil {
			log.Fatal(err)
		}
		b, err := h.WaitForBegin(ctx) // the incumbent has sealed and let go of the lock
		if err != nil {
			log.Fatal(err)
		}
		guard := b.StartHeartbeats()
		lock, err := handoff.AcquireDataDirLock(dataDir)
		if err != nil {
			log.Fatal(err)
		}
		// ... open the data ...
		guard.Stop()
		inc, err = b.AnnounceAndBind(handoff.ReadinessSnapshot{HealthzOK: true}, "", lock)
		if err != nil {
			os.Exit(1) // rejected (ErrAborted): exit without serving
		}
		ls = b.Listeners()
	}
	ln, err := ls.Listener("http")
	if err != nil {
		log.Fatal(err)
	}
	// Drain with the adapter, never with http.Server.Shutdown (see Drainable).
	srv, err := httphandoff.New(httphandoff.Config{Handler: http.NotFoundHandler()}, ln)
	if err != nil || srv.Start() != nil {
		log.Fatal(err)
	}
	err = inc.Serve(ctx, srv) // nil: committed, the successor serves now
	srv.Shutdown(context.WithoutCancel(ctx))
	if err != nil {
		log.Fatal(err)
	}
}
