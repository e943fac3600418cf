package httphandoff_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os/signal"
	"syscall"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/httphandoff"
)

// The adapter on its own: serve, drain (the socket stays open), resume on
// the same socket, shut down.
func Example() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := httphandoff.New(httphandoff.Config{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "hello")
		}),
		Sync: func(context.Context) error {
			fmt.Println("sync: every accepted write is durable")
			return nil
		},
		Reopen: func(context.Context) error {
			fmt.Println("reopen: state reloaded from disk")
			return nil
		},
	}, ln)
	if err != nil {
		log.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func() {
		resp, err := client.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Println(resp.Status, string(body))
	}

	ctx := context.Background()
	get()
	rep, err := srv.Drain(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("drained: accept closed:", rep.AcceptClosed)
	if err := srv.ResumeAfterAbort(ctx); err != nil {
		log.Fatal(err)
	}
	get()
	if err := srv.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// 200 OK hello
	// sync: every accepted write is durable
	// drained: accept closed: true
	// reopen: state reloaded from disk
	// 200 OK hello
}

// A cold-started daemon: take the inherited listener (or bind one), lock
// the data directory, become the incumbent and serve until a handoff
// commits. examples/kvd shows the successor's side too.
func Example_incumbent() {
	const dataDir, controlSocket = "/var/lib/mydaemon", "/run/mydaemon/handoff.sock"
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()

	role, err := handoff.DetectRole()
	if err != nil {
		log.Fatal(err)
	}
	cold, ok := role.(*handoff.ColdStart)
	if !ok {
		log.Fatal("spawned as a successor: see examples/kvd")
	}
	ln, err := cold.Inherited.Listener("http")
	if errors.Is(err, handoff.ErrNotInherited) {
		ln, err = net.Listen("tcp", "127.0.0.1:8080")
	}
	if err != nil {
		log.Fatal(err)
	}
	lock, err := handoff.AcquireDataDirLockOrBreakStale(dataDir)
	if err != nil {
		log.Fatal(err)
	}
	// Open the daemon's state here; the hooks below flush, seal and reopen it.
	srv, err := httphandoff.New(httphandoff.Config{
		Handler: http.NotFoundHandler(),
		Seal: func(context.Context) (handoff.SealReport, error) {
			return handoff.SealReport{LastRevisionPerShard: []uint64{0}}, nil
		},
	}, ln)
	if err != nil {
		log.Fatal(err)
	}
	inc, err := handoff.BindColdStart(controlSocket, lock)
	if err != nil {
		log.Fatal(err)
	}
	defer inc.Close()
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	if err := inc.Serve(ctx, srv); err != nil {
		log.Print(err) // stopped: drain, seal and release the lock, as examples/kvd does
	}
	// Committed (or stopped): let in-flight requests finish, then exit.
	srv.Shutdown(context.Background())
}
