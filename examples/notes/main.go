// Command notes is the smallest complete daemon on handoff's front door: an
// HTTP service that appends notes to a fsync'd file. README.md quotes this
// file; CI compiles it and hands it off under the supervisor.
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/httphandoff"
)

// notes is the daemon's state: one append-only file.
type notes struct {
	mu sync.Mutex
	f  *os.File
}

// open opens the file unless it is open: an aborted handoff may follow a
// failed drain (still open) or a seal (closed).
func (n *notes) open(dir string) (err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.f == nil {
		n.f, err = os.OpenFile(filepath.Join(dir, "notes"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	}
	return err
}

// close closes the file; every write was fsync'd before it was answered.
func (n *notes) close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	f := n.f
	n.f = nil
	if f == nil {
		return nil
	}
	return f.Close()
}

// ServeHTTP: POST appends the body and answers once it is durable; GET reads all.
func (n *notes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.f == nil {
		http.Error(w, "sealed", http.StatusServiceUnavailable)
		return
	}
	if r.Method == http.MethodPost {
		body, _ := io.ReadAll(r.Body)
		if _, err := n.f.Write(append(body, '\n')); err != nil || n.f.Sync() != nil {
			http.Error(w, "not stored", http.StatusInternalServerError)
		}
		return
	}
	n.f.Seek(0, io.SeekStart)
	io.Copy(w, n.f)
}

func main() {
	dir := flag.String("data", "/var/lib/notes", "data directory")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := handoff.Run(ctx, handoff.Config{
		DataDir: *dir,
		Listen:  map[string]string{"http": "127.0.0.1:8080"}, // when not inherited
		Open: func(_ context.Context, ls *handoff.InheritedListeners) (handoff.Service, error) {
			ln, err := ls.Listener("http")
			if err != nil {
				return nil, err
			}
			n := &notes{}
			if err := n.open(*dir); err != nil {
				return nil, err
			}
			return httphandoff.New(httphandoff.Config{
				Handler: n, // every write is fsync'd before it is answered: Sync has nothing to do
				Seal:    func(context.Context) (handoff.SealReport, error) { return handoff.SealReport{}, n.close() },
				Reopen:  func(context.Context) error { return n.open(*dir) }, // the handoff was aborted
				Close:   func(context.Context) error { return n.close() },
			}, ln)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
}
