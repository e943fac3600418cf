package httphandoff_test

import (
	"context"
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

// A daemon's main on the front door: Run hands the adapter the listener
// and drives it through every handoff. It has no output to check: it is a
// main, for a supervisor (or started by hand).
func Example_daemon() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err := handoff.Run(ctx, handoff.Config{
		DataDir: "/var/lib/mydaemon",
		Listen:  map[string]string{"http": "127.0.0.1:8080"}, // when not inherited
		Open: func(_ context.Context, ls *handoff.InheritedListeners) (handoff.Service, error) {
			ln, err := ls.Listener("http")
			if err != nil {
				return nil, err
			}
			// Open the daemon's state here; the hooks flush, seal, reopen and close it.
			return httphandoff.New(httphandoff.Config{
				Handler: http.NotFoundHandler(),
				Seal: func(context.Context) (handoff.SealReport, error) {
					return handoff.SealReport{}, nil
				},
			}, ln)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
}
