package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/httphandoff"
)

// The keep-alive mode's request: GET kaPath on a persistent HTTP/1.1
// connection, answered 200 with kaBody.
const (
	kaPath = "/ping"
	kaBody = "pong\n"
)

// kaHandler answers every request of the keep-alive mode.
func kaHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, kaBody)
	})
}

// runHTTPDaemon is the keep-alive mode's daemon under the library: an
// HTTP/1.1 server on httphandoff, driven by handoff.Run on the listener the
// supervisor passes. httphandoff.Server is a handoff.ConnPasser, so idle
// keep-alive connections go to the successor when the peers can pass
// them; nothing in this daemon is about passing.
func runHTTPDaemon(ctx context.Context, dir string) error {
	if dir == "" {
		return fmt.Errorf("%s is not set", envDir)
	}
	return handoff.Run(ctx, handoff.Config{
		DataDir: filepath.Join(dir, dataDirName),
		BuildID: buildID,
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Open: func(_ context.Context, ls *handoff.InheritedListeners) (handoff.Service, error) {
			ln, err := ls.Listener(listenerName)
			if err != nil {
				return nil, err
			}
			return httphandoff.New(httphandoff.Config{Handler: kaHandler()}, ln)
		},
	})
}

// runHTTPPlain is the same HTTP server without the library, for the
// baselines: it binds addr itself, reports "ready <addr> <unix ns>", and on
// SIGTERM closes its listener, then shuts the server down as a net/http
// daemon does (http.Server.Shutdown: idle keep-alive connections are
// closed, busy ones after their response), reports "closed <unix ns>" (when
// the listener closed) and exits.
func runHTTPPlain(ctx context.Context, addr string, reusePort bool, report *os.File) error {
	defer report.Close()
	ln, err := listenPlain(ctx, addr, reusePort)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: kaHandler(), ReadHeaderTimeout: httphandoff.DefaultReadHeaderTimeout}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if _, err := fmt.Fprintf(report, "ready %s %d\n", ln.Addr(), time.Now().UnixNano()); err != nil {
		return errors.Join(fmt.Errorf("report: %w", err), srv.Close())
	}
	<-ctx.Done()
	err = ln.Close()
	closed := time.Now()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		err = fmt.Errorf("close listener: %w", err)
	} else {
		err = nil
	}
	<-served // the listener is closed: Serve returns (and lets go of it)
	sctx, cancel := context.WithTimeout(context.Background(), connTimeout)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		err = errors.Join(err, fmt.Errorf("shutdown: %w", serr))
	}
	if _, rerr := fmt.Fprintf(report, "closed %d\n", closed.UnixNano()); rerr != nil {
		err = errors.Join(err, fmt.Errorf("report: %w", rerr))
	}
	return err
}
