package supervisor_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/httphandoff"
	"github.com/handoff-go/handoff/supervisor"
)

// The daemon of the example: this test binary run with EXAMPLE_DAEMON set,
// an HTTP server on handoff.Run answering with its build id. A program
// names its daemon's installed binaries instead.
func init() {
	build := os.Getenv("EXAMPLE_DAEMON")
	if build == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err := handoff.Run(ctx, handoff.Config{
		DataDir: os.Getenv("EXAMPLE_DATA"),
		BuildID: build,
		Open: func(_ context.Context, ls *handoff.InheritedListeners) (handoff.Service, error) {
			ln, err := ls.Listener("http")
			if err != nil {
				return nil, err
			}
			return httphandoff.New(httphandoff.Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				io.WriteString(w, build)
			})}, ln)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	os.Exit(0)
}

// A supervisor embedded in a program: hold the listener, start the daemon,
// hand it off to a new binary, stop it. The test binary plays both
// versions of the daemon (see init above).
func ExampleSupervisor_PerformHandoff() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "handoff.sock")
	if err := os.Mkdir(data, 0o755); err != nil {
		log.Fatal(err)
	}
	daemon := func(build string) supervisor.SpawnSpec {
		return supervisor.SpawnSpec{
			Binary: os.Args[0],
			Env:    []string{"EXAMPLE_DAEMON=" + build, "EXAMPLE_DATA=" + data},
		}
	}

	sup, err := supervisor.New(supervisor.Config{ControlSocket: sock})
	if err != nil {
		log.Fatal(err)
	}
	defer sup.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	if err := sup.AddListener("http", ln); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := sup.ColdStart(ctx, daemon("v1")); err != nil {
		log.Fatal(err)
	}
	out, err := sup.PerformHandoff(ctx, daemon("v2"))
	switch {
	case err != nil:
		log.Fatal(err)
	case out.Committed:
		fmt.Println("committed; serving build", out.BuildID)
	default:
		fmt.Println("rolled back:", out.AbortReason)
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println("answered by", string(body))
	// SIGTERM: the daemon shuts down and exits.
	if err := sup.Stop(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// committed; serving build v2
	// answered by v2
}
