package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"syscall"

	"github.com/handoff-go/handoff/examples/kvd/store"
)

// routes returns the HTTP API.
func (d *daemon) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /kv/{key}", d.put)
	mux.HandleFunc("GET /kv/{key}", d.get)
	mux.HandleFunc("DELETE /kv/{key}", d.del)
	mux.HandleFunc("GET /healthz", d.healthz)
	mux.HandleFunc("GET /stats", d.stats)
	return mux
}

// writeReply is the answer to PUT and DELETE.
type writeReply struct {
	Key      string `json:"key"`
	Revision uint64 `json:"revision"`
}

// statsReply is the answer to GET /stats.
type statsReply struct {
	Revision uint64 `json:"revision"`
	Keys     int    `json:"keys"`
	BuildID  string `json:"build_id"`
	PID      int    `json:"pid"`
	// Writable is the store's health check (see /healthz); WriteError
	// says why not.
	Writable   bool   `json:"writable"`
	WriteError string `json:"write_error,omitempty"`
	// RESP connections of this process, with a listener "resp":
	// accepted here, passed to it (or given back after an aborted
	// handoff), and open now.
	RESPAccepted int64 `json:"resp_accepted,omitempty"`
	RESPAdopted  int64 `json:"resp_adopted,omitempty"`
	RESPConns    int   `json:"resp_conns,omitempty"`
}

// httpKey is the request's key, or false (answered 400) if it is one of
// the RESP databases' reserved keys.
func httpKey(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.PathValue("key")
	if reservedKey(key) {
		replyError(w, http.StatusBadRequest, errReservedKey)
		return "", false
	}
	return key, true
}

func (d *daemon) put(w http.ResponseWriter, r *http.Request) {
	key, ok := httpKey(w, r)
	if !ok {
		return
	}
	value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, store.MaxValueLen))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			replyError(w, http.StatusRequestEntityTooLarge, err)
			return
		}
		replyError(w, http.StatusBadRequest, err)
		return
	}
	rev, err := d.store.Put(key, value) // returns once durable
	d.replyWrite(w, key, rev, err)
}

func (d *daemon) del(w http.ResponseWriter, r *http.Request) {
	key, ok := httpKey(w, r)
	if !ok {
		return
	}
	rev, err := d.store.Delete(key)
	d.replyWrite(w, key, rev, err)
}

func (d *daemon) replyWrite(w http.ResponseWriter, key string, rev uint64, err error) {
	d.noteWrite(err)
	if err != nil {
		replyError(w, writeStatus(err), err)
		return
	}
	w.Header().Set("X-Kvd-Revision", strconv.FormatUint(rev, 10))
	replyJSON(w, http.StatusOK, writeReply{Key: key, Revision: rev})
}

// writeStatus maps a store error to an HTTP status. A sealed or closed
// store is a handoff or a shutdown in progress: 503, retry (the next
// process will take the write). A full disk is 507, any other write that
// failed (a read-only disk) 503: the next write tries again. A failed
// store (an fsync failed) is 500: it refuses writes until a restart.
func writeStatus(err error) int {
	switch {
	case errors.Is(err, store.ErrSealed), errors.Is(err, store.ErrClosed):
		return http.StatusServiceUnavailable
	case errors.Is(err, store.ErrWriteFailed) && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)):
		return http.StatusInsufficientStorage
	case errors.Is(err, store.ErrWriteFailed):
		return http.StatusServiceUnavailable
	case errors.Is(err, store.ErrInvalidKey):
		return http.StatusBadRequest
	case errors.Is(err, store.ErrValueTooLarge):
		return http.StatusRequestEntityTooLarge
	default:
		return http.StatusInternalServerError
	}
}

func (d *daemon) get(w http.ResponseWriter, r *http.Request) {
	key, ok := httpKey(w, r)
	if !ok {
		return
	}
	rev := d.store.Revision()
	v, ok := d.store.Get(key)
	w.Header().Set("X-Kvd-Revision", strconv.FormatUint(rev, 10))
	if !ok {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(v)
}

func (d *daemon) healthz(w http.ResponseWriter, _ *http.Request) {
	if err := d.store.Check(); err != nil {
		replyError(w, http.StatusServiceUnavailable, err)
		return
	}
	io.WriteString(w, "ok\n")
}

func (d *daemon) stats(w http.ResponseWriter, _ *http.Request) {
	r := statsReply{
		Revision: d.store.Revision(),
		Keys:     d.store.Len(),
		BuildID:  d.cfg.buildID,
		PID:      os.Getpid(),
		Writable: true,
	}
	if err := d.store.Check(); err != nil {
		r.Writable, r.WriteError = false, err.Error()
	}
	if d.resp != nil {
		r.RESPAccepted, r.RESPAdopted, r.RESPConns = d.resp.accepted.Load(), d.resp.adopted.Load(), d.resp.openConns()
	}
	replyJSON(w, http.StatusOK, r)
}

func replyJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func replyError(w http.ResponseWriter, status int, err error) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	replyJSON(w, status, struct {
		Error string `json:"error"`
	}{err.Error()})
}
