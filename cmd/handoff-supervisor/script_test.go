package main

import (
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestScript runs the scripts in testdata/script against the supervisor
// binary (the test binary itself, registered as handoff-supervisor by
// TestMain).
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata/script"})
}
