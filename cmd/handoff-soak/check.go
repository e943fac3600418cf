package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"
)

// maxLostExamples bounds the lost keys a report names.
const maxLostExamples = 10

// liveCheck is the read-back of every acknowledged write from the daemon.
type liveCheck struct {
	Checked int      `json:"checked"`
	Lost    []string `json:"lost,omitempty"` // keys missing or holding another value
	LostN   int      `json:"lost_n"`
	Errors  int      `json:"errors"` // keys that could not be read (transport errors, 5xx)
}

// checkLive GETs every acknowledged key from the daemon at addr, over a
// few keep-alive connections; a key that cannot be read after a few
// tries counts as an error, not as lost.
func checkLive(ctx context.Context, addr string, acked map[string]string, timeout time.Duration) liveCheck {
	const workers = 8
	keys := make([]string, 0, len(acked))
	for k := range acked {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}, Timeout: timeout}
	defer c.CloseIdleConnections()
	work := make(chan string)
	var mu sync.Mutex
	var res liveCheck
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for k := range work {
				lost, err := readBack(ctx, c, addr, k, acked[k])
				mu.Lock()
				switch {
				case err != nil:
					res.Errors++
				case lost:
					res.LostN++
					if len(res.Lost) < maxLostExamples {
						res.Lost = append(res.Lost, k)
					}
					res.Checked++
				default:
					res.Checked++
				}
				mu.Unlock()
			}
		})
	}
	for _, k := range keys {
		work <- k
	}
	close(work)
	wg.Wait()
	sort.Strings(res.Lost)
	return res
}

// readBack reads key, trying again a few times on transport errors and
// 5xx (no handoff runs now, so those would be a finding of their own).
func readBack(ctx context.Context, c *http.Client, addr, key, want string) (lost bool, err error) {
	for try := 0; ; try++ {
		var status int
		var body []byte
		req, rerr := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/kv/"+key, nil)
		if rerr != nil {
			return false, rerr
		}
		resp, err := c.Do(req)
		if err == nil {
			status = resp.StatusCode
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		switch {
		case err == nil && status == http.StatusOK:
			return string(body) != want, nil
		case err == nil && status == http.StatusNotFound:
			return true, nil
		case err == nil:
			err = fmt.Errorf("status %d", status)
		}
		if try == 2 || ctx.Err() != nil {
			return false, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// diskCheck is the read-back of every acknowledged write from the data
// directory (kvd --dump) after the supervisor stopped.
type diskCheck struct {
	Checked  int      `json:"checked"`
	Lost     []string `json:"lost,omitempty"`
	LostN    int      `json:"lost_n"`
	Keys     int      `json:"keys"`     // keys in the dump
	Revision uint64   `json:"revision"` // the store's revision
	// Unacked: keys in the dump whose PUT got no 200 (the write may land
	// although its answer was lost; not an error).
	Unacked int    `json:"unacked"`
	Error   string `json:"error,omitempty"`
}

func checkDisk(data map[string][]byte, rev uint64, acked map[string]string) diskCheck {
	d := diskCheck{Keys: len(data), Revision: rev}
	for k, want := range acked {
		d.Checked++
		if got, ok := data[k]; !ok || string(got) != want {
			d.LostN++
			if len(d.Lost) < maxLostExamples {
				d.Lost = append(d.Lost, k)
			}
		}
	}
	for k := range data {
		if _, ok := acked[k]; !ok {
			d.Unacked++
		}
	}
	sort.Strings(d.Lost)
	return d
}
