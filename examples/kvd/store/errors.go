package store

import (
	"errors"
	"fmt"
)

// Errors returned by the store. Test for them with errors.Is.
var (
	// ErrSealed: the store was sealed for a handoff and takes no writes
	// until Reopen.
	ErrSealed = errors.New("store: sealed")

	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")

	// ErrFailed: an fsync of the log (or of the directory, when a segment
	// starts) failed. After a failed fsync the kernel may have dropped the
	// pages it could not write, so the store never retries it: it refuses
	// writes for good and serves reads (every acknowledged write is in
	// memory); restart the process to recover from disk.
	ErrFailed = errors.New("store: failed")

	// ErrWriteFailed: writing the log failed without an fsync failing (a
	// full or read-only disk), or the log could not be opened for writing.
	// The write, and those batched with it, were not applied, and what the
	// failed write appended to the log is cut off before anything else is
	// written. The store stays open and serves reads; the next write tries
	// again, so writes work again as soon as the disk takes them.
	ErrWriteFailed = errors.New("store: write failed")

	// ErrCorrupt: a file in the data directory is damaged somewhere other
	// than a torn log tail. The error is a *CorruptError.
	ErrCorrupt = errors.New("store: corrupt")

	// ErrInvalidKey: the key is empty or longer than MaxKeyLen.
	ErrInvalidKey = errors.New("store: invalid key")

	// ErrValueTooLarge: the value is longer than MaxValueLen.
	ErrValueTooLarge = errors.New("store: value too large")
)

// CorruptError names the file and offset of damaged data. It matches
// ErrCorrupt with errors.Is.
type CorruptError struct {
	Path   string
	Offset int64
	Err    error // what is wrong there
}

// Error names the file, the offset and the cause.
func (e *CorruptError) Error() string {
	return fmt.Sprintf("store: %s is corrupt at offset %d: %s", e.Path, e.Offset, e.Err)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true and exposes the detail.
func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }
