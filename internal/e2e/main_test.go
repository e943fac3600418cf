package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/gobuild"
	"go.uber.org/goleak"
)

// Binaries built once by TestMain.
var (
	supervisorBin string // handoff-supervisor
	kvdBin        string // examples/kvd
	// buildErr is why they could not be built; every test fails with it.
	buildErr error
)

// buildTimeout bounds building both binaries.
const buildTimeout = 5 * time.Minute

func TestMain(m *testing.M) {
	flag.Parse()
	var dir string
	if !testing.Short() {
		var err error
		dir, err = os.MkdirTemp("", "handoff-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		buildErr = build(dir)
	}
	code := m.Run()
	if dir != "" {
		os.RemoveAll(dir)
	}
	if code == 0 {
		// The tests' own goroutines (log readers, connection workers)
		// must all have ended with the processes they served.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// build compiles handoff-supervisor and kvd from the module's working
// tree into dir, in one go build so that what they share compiles once.
// They are not race-built whatever the test binary is: they are the
// programs under test, run as they are deployed.
func build(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	root, err := gobuild.ModuleRoot(ctx, "")
	if err != nil {
		return err
	}
	if err := gobuild.Build(ctx, root, dir+string(filepath.Separator), "", "./cmd/handoff-supervisor", "./examples/kvd"); err != nil {
		return err
	}
	supervisorBin = filepath.Join(dir, "handoff-supervisor")
	kvdBin = filepath.Join(dir, "kvd")
	return nil
}

// needBinaries skips t under -short and fails it when the build failed.
func needBinaries(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the supervisor and kvd processes; skipped with -short")
	}
	if buildErr != nil {
		t.Fatalf("building the binaries: %v", buildErr)
	}
}
