package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// populateTimeout bounds the population of one data directory.
const populateTimeout = 10 * time.Minute

// popKey is the key of the i-th entry kvd --populate writes.
func popKey(i int) string {
	return fmt.Sprintf("pop-%08d", i)
}

// popValue is the value kvd --populate writes under popKey(i): the key's
// eight digits repeated to size bytes.
func popValue(i, size int) []byte {
	digits := fmt.Appendf(nil, "%08d", i)
	v := make([]byte, size)
	for j := range v {
		v[j] = digits[j%len(digits)]
	}
	return v
}

// populated is what populate wrote.
type populated struct {
	Took      time.Duration `json:"took_ns"`
	DiskBytes int64         `json:"disk_bytes"` // the data directory's files
}

// populate fills the fresh data directory dir with n keys of valueSize
// bytes with kvd --populate (many concurrent Puts, which the store commits
// in groups, then a compaction into one snapshot: the form a running kvd
// leaves behind once its background compaction caught up).
func populate(ctx context.Context, bin, dir string, n, valueSize int, logf *os.File) (populated, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, populateTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--data", dir, "--populate", strconv.Itoa(n), "--value-size", strconv.Itoa(valueSize))
	cmd.Stderr = logf
	out, err := cmd.Output()
	if err != nil {
		return populated{}, fmt.Errorf("kvd --populate %d: %w", n, err)
	}
	var rep struct {
		Keys int `json:"keys"`
	}
	if err := json.NewDecoder(bytes.NewReader(out)).Decode(&rep); err != nil {
		return populated{}, fmt.Errorf("kvd --populate %d: %q: %w", n, strings.TrimSpace(string(out)), err)
	}
	if rep.Keys != n {
		return populated{}, fmt.Errorf("kvd --populate %d: the store holds %d keys", n, rep.Keys)
	}
	size, err := dirSize(dir)
	return populated{Took: time.Since(start), DiskBytes: size}, err
}

// dirSize adds up the sizes of the regular files in dir.
func dirSize(dir string) (int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("data directory: %w", err)
	}
	var n int64
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			return 0, fmt.Errorf("data directory: %w", err)
		}
		if fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n, nil
}
