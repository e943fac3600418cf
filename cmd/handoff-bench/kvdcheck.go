package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// dumpTimeout bounds one kvd --dump and its check.
const dumpTimeout = 5 * time.Minute

// diskCheck is what kvd --dump found in the data directory once no kvd
// served it.
type diskCheck struct {
	Revision uint64 `json:"revision"`
	Keys     int    `json:"keys"`
	// PopulatedBad counts the populated keys missing or holding another
	// value than the one written.
	PopulatedBad int `json:"populated_bad"`
	// Lost are the acknowledged writes missing or holding another value.
	Lost []string      `json:"lost,omitempty"`
	Took time.Duration `json:"took_ns"`
}

// checkDisk runs kvd --dump on data (it takes the data-directory lock and
// recovers the store like a cold start) and checks, while the dump streams
// in, every populated key and every acknowledged write. The dump of a
// large store is larger than the store, so it is never held in memory.
func checkDisk(ctx context.Context, bin, data string, n, valueSize int, acked map[string]string, logf *os.File) (diskCheck, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, dumpTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--data", data, "--dump")
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return diskCheck{}, fmt.Errorf("kvd --dump: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return diskCheck{}, fmt.Errorf("kvd --dump: %w", err)
	}
	dc, err := readDump(bufio.NewReaderSize(out, 1<<20), n, valueSize, acked)
	if err != nil {
		io.Copy(io.Discard, out) // let it finish, so Wait returns
	}
	if werr := cmd.Wait(); werr != nil {
		err = errors.Join(err, fmt.Errorf("kvd --dump: %w", werr))
	}
	dc.Took = time.Since(start)
	return dc, err
}

// readDump reads {"revision": N, "data": {"key": "base64 value", ...}}
// token by token.
func readDump(r io.Reader, n, valueSize int, acked map[string]string) (diskCheck, error) {
	var dc diskCheck
	dec := json.NewDecoder(r)
	dec.UseNumber()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("kvd --dump: "+format, args...)
	}
	if err := expectDelim(dec, '{'); err != nil {
		return dc, bad("%w", err)
	}
	popOK := 0
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return dc, bad("%w", err)
		}
		switch t {
		case "revision":
			t, err := dec.Token()
			if err != nil {
				return dc, bad("revision: %w", err)
			}
			num, _ := t.(json.Number)
			if dc.Revision, err = strconv.ParseUint(string(num), 10, 64); err != nil {
				return dc, bad("revision %v: %w", t, err)
			}
		case "data":
			if err := expectDelim(dec, '{'); err != nil {
				return dc, bad("data: %w", err)
			}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return dc, bad("data: %w", err)
				}
				vt, err := dec.Token()
				if err != nil {
					return dc, bad("data: %w", err)
				}
				key, _ := kt.(string)
				enc, _ := vt.(string)
				v, err := base64.StdEncoding.DecodeString(enc)
				if err != nil {
					return dc, bad("value of %q: %w", key, err)
				}
				dc.Keys++
				if want, ok := acked[key]; ok {
					if string(v) == want {
						seen[key] = true
					}
				} else if i, ok := popIndex(key, n); ok && bytes.Equal(v, popValue(i, valueSize)) {
					popOK++
				}
			}
			if err := expectDelim(dec, '}'); err != nil {
				return dc, bad("data: %w", err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return dc, bad("%v: %w", t, err)
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return dc, bad("%w", err)
	}
	dc.PopulatedBad = n - popOK
	for k := range acked {
		if !seen[k] {
			dc.Lost = append(dc.Lost, k)
		}
	}
	slices.Sort(dc.Lost)
	return dc, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t != want {
		return fmt.Errorf("got %v, want %v", t, want)
	}
	return nil
}

// popIndex returns i if key is popKey(i) for some i < n.
func popIndex(key string, n int) (int, bool) {
	digits, ok := strings.CutPrefix(key, "pop-")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(digits)
	if err != nil || i < 0 || i >= n || popKey(i) != key {
		return 0, false
	}
	return i, true
}
