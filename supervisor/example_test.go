package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/supervisor"
)

func ExampleAcquireDataDirLock() {
	dir, _ := os.MkdirTemp("", "data")
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

func ExampleDetectRole() {
	role, err := handoff.DetectRole()
	if err != nil {
		log.Fatal(err)
	}
	switch r := role.(type) {
	case *handoff.ColdStart:
		// Started by hand: nothing inherited, so bind our own socket.
		_, err := r.Inherited.Listener("http")
		fmt.Println("cold start; http inherited:", !errors.Is(err, handoff.ErrNotInherited))
	case *handoff.Successor:
		fmt.Println("successor")
	}
	// Output: cold start; http inherited: false
}

// myDB stands for the daemon's state.
type myDB struct{ srv *http.Server }

func (db *myDB) Drain(ctx context.Context) (handoff.DrainReport, error) {
	// Stop accepting, finish in-flight requests, fsync.
	return handoff.DrainReport{AcceptClosed: true}, db.srv.Shutdown(ctx)
}
func (db *myDB) Seal(ctx context.Context) (handoff.SealReport, error) {
	// Flush, close writer state, fsync; the library releases the lock next.
	return handoff.SealReport{LastRevisionPerShard: []uint64{42}}, nil
}
func (db *myDB) ResumeAfterAbort(ctx context.Context) error { return nil }

// A daemon's main: both roles, in a few lines each. It has no output to
// check: it is a main that needs its supervisor, a data directory and a
// control socket path (ExampleSupervisor_PerformHandoff runs a daemon).
func Example_daemon() {
	const dataDir, controlSock = "/var/lib/mydb", "/run/mydb/handoff.sock"
	role, err := handoff.DetectRole()
	if err != nil {
		log.Fatal(err)
	}
	var inc *handoff.Incumbent
	var ln net.Listener
	switch r := role.(type) {
	case *handoff.ColdStart:
		if ln, err = r.Inherited.Listener("http"); errors.Is(err, handoff.ErrNotInherited) {
			ln, err = net.Listen("tcp", "127.0.0.1:8080")
		}
		if err != nil {
			log.Fatal(err)
		}
		lock, err := handoff.AcquireDataDirLockOrBreakStale(dataDir)
		if err != nil {
			log.Fatal(err)
		}
		if inc, err = handoff.BindColdStart(controlSock, lock); err != nil {
			log.Fatal(err)
		}
	case *handoff.Successor:
		h, err := r.Handshake("v2")
		if err != nil {
			log.Fatal(err)
		}
		b, err := h.WaitForBegin(context.Background()) // the incumbent has sealed
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
		if ln, err = b.Listeners().Listener("http"); err != nil {
			log.Fatal(err)
		}
		inc, err = b.AnnounceAndBind(handoff.ReadinessSnapshot{HealthzOK: true, AdvertisedRevisionPerShard: []uint64{42}}, controlSock, lock)
		if err != nil {
			os.Exit(1) // rejected (ErrAborted): exit without serving
		}
	}
	db := &myDB{srv: &http.Server{}}
	go db.srv.Serve(ln)
	if err := inc.Serve(context.Background(), db); err != nil {
		log.Fatal(err)
	}
	// Committed: the successor serves now. Exit.
}

// A supervisor embedded in a program: hold the listener, start the daemon,
// hand it off to a new binary, stop it. In this example the package's test
// binary plays both versions of the daemon (see TestMain); a program names
// its daemon's installed binaries instead.
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
			Env:    []string{"HANDOFF_TEST_ROLE=daemon", "TD_BUILD=" + build, "TD_DATA=" + data, "TD_CONTROL=" + sock},
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
	if err := sup.AddListener("tcp", ln); err != nil {
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
	// SIGTERM: the daemon drains, seals and exits.
	if err := sup.Stop(ctx); err != nil {
		log.Fatal(err)
	}
	// Output: committed; serving build v2
}
