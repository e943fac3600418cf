package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testutil"
	"github.com/handoff-go/handoff/supervisor"
)

// TestMain runs main when the supervisor spawns the test binary as the daemon.
func TestMain(m *testing.M) {
	if os.Getenv("NOTES_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The README quotes this file whole, so what a newcomer copies compiles.
func TestREADMEQuotesThisFile(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```go\n"+string(src)+"```\n") {
		t.Fatal("README.md does not quote examples/notes/main.go verbatim in a ```go block: copy the file into it")
	}
}

// Every note acknowledged survives handoffs, under the supervisor, with
// the control socket configured only on the supervisor.
func TestNotesSurviveHandoffs(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := testutil.ShortDir(t)
	data := filepath.Join(dir, "data")
	testutil.Must(t, os.Mkdir(data, 0o700))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	testutil.Must(t, err)
	url := "http://" + ln.Addr().String() + "/"
	sup, err := supervisor.New(supervisor.Config{ControlSocket: filepath.Join(dir, "ctl"), Logger: testutil.Logger()})
	testutil.Must(t, err)
	defer sup.Close()
	testutil.Must(t, sup.AddListener("http", ln))
	ln.Close()
	spec := supervisor.SpawnSpec{Binary: os.Args[0], Args: []string{"-data", data}, Env: []string{"NOTES_MAIN=1"},
		DrainGrace: 5 * time.Second, Deadline: 20 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = sup.ColdStart(ctx, spec)
	testutil.Must(t, err)

	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var want []string
	for i := range 5 {
		for j := range 3 {
			note := "note-" + strconv.Itoa(i) + "-" + strconv.Itoa(j)
			resp, err := client.Post(url, "text/plain", strings.NewReader(note))
			if err != nil {
				t.Fatalf("POST %s: %v", note, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("POST %s: %s", note, resp.Status)
			}
			want = append(want, note)
		}
		out, err := sup.PerformHandoff(ctx, spec)
		if err != nil || !out.Committed {
			t.Fatalf("handoff %d: %v %+v", i, err, out)
		}
	}
	resp, err := client.Get(url)
	testutil.Must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := strings.Fields(string(body)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("notes after the handoffs: %q, want %q", got, want)
	}
	testutil.Must(t, sup.Stop(ctx))
}
