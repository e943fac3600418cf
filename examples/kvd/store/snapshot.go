package store

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
)

const snapMagic = "KVDSNAP1"

// snapHeaderLen is the magic, the revision and the count.
const snapHeaderLen = len(snapMagic) + 8 + 8

// encodeSnapshot writes the snapshot of data at rev to w, trailer included,
// and returns the fingerprint of what it wrote.
func encodeSnapshot(w io.Writer, rev uint64, data map[string][]byte) (string, error) {
	crc := crc32.New(castagnoli)
	sum := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc, sum), 1<<16)
	var buf []byte
	buf = append(buf, snapMagic...)
	buf = binary.LittleEndian.AppendUint64(buf, rev)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(data)))
	bw.Write(buf)
	for _, k := range slices.Sorted(maps.Keys(data)) {
		v := data[k]
		buf = binary.AppendUvarint(buf[:0], uint64(len(k)))
		buf = append(buf, k...)
		buf = binary.AppendUvarint(buf, uint64(len(v)))
		bw.Write(buf)
		bw.Write(v)
	}
	if err := bw.Flush(); err != nil {
		return "", err
	}
	if _, err := w.Write(binary.LittleEndian.AppendUint32(nil, crc.Sum32())); err != nil {
		return "", err
	}
	return fingerprint(rev, sum), nil
}

// fingerprint formats the revision and the SHA-256 of a snapshot's body.
func fingerprint(rev uint64, sum hash.Hash) string {
	return fmt.Sprintf("r%d-%x", rev, sum.Sum(nil)[:12])
}

// stateFingerprint is the fingerprint the snapshot of data at rev would have.
func stateFingerprint(rev uint64, data map[string][]byte) string {
	fp, _ := encodeSnapshot(io.Discard, rev, data) // io.Discard never fails
	return fp
}

// writeSnapshot writes the snapshot atomically: a temporary file, fsync,
// rename over path, fsync of the directory. On failure before the rename
// the old snapshot is untouched. syncFile is the store's fsync.
func writeSnapshot(path string, rev uint64, data map[string][]byte, syncFile func(*os.File) error) (fp string, err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("store: create snapshot: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if fp, err = encodeSnapshot(tmp, rev, data); err != nil {
		return "", fmt.Errorf("store: write snapshot %s: %w", tmp.Name(), err)
	}
	if err = syncFile(tmp); err != nil {
		return "", fmt.Errorf("store: fsync snapshot %s: %w", tmp.Name(), err)
	}
	if err = tmp.Close(); err != nil {
		return "", fmt.Errorf("store: close snapshot %s: %w", tmp.Name(), err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("store: rename snapshot into place: %w", err)
	}
	return fp, syncDir(dir)
}

// readSnapshot loads the snapshot at path. A missing file is an empty
// state at revision 0 with no fingerprint.
func readSnapshot(path string) (rev uint64, data map[string][]byte, fp string, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, map[string][]byte{}, "", nil
	}
	if err != nil {
		return 0, nil, "", fmt.Errorf("store: read snapshot: %w", err)
	}
	corrupt := func(off int, format string, args ...any) error {
		return &CorruptError{Path: path, Offset: int64(off), Err: fmt.Errorf(format, args...)}
	}
	if len(b) < snapHeaderLen+4 {
		return 0, nil, "", corrupt(0, "snapshot of %d bytes is too short", len(b))
	}
	body := b[:len(b)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(b[len(body):]); got != want {
		return 0, nil, "", corrupt(len(body), "snapshot checksum mismatch")
	}
	if string(body[:len(snapMagic)]) != snapMagic {
		return 0, nil, "", corrupt(0, "not a snapshot (magic %q)", body[:len(snapMagic)])
	}
	rev = binary.LittleEndian.Uint64(body[len(snapMagic):])
	count := binary.LittleEndian.Uint64(body[len(snapMagic)+8:])
	data = make(map[string][]byte, min(count, uint64(len(body))))
	p := body[snapHeaderLen:]
	var prev []byte
	for i := uint64(0); i < count; i++ {
		off := len(body) - len(p)
		k, rest, err := uvarintBytes(p, MaxKeyLen)
		if err != nil {
			return 0, nil, "", corrupt(off, "entry %d key: %w", i, err)
		}
		if i > 0 && bytes.Compare(prev, k) >= 0 {
			return 0, nil, "", corrupt(off, "entry %d: keys out of order", i)
		}
		v, rest, err := uvarintBytes(rest, MaxValueLen)
		if err != nil {
			return 0, nil, "", corrupt(off, "entry %d value: %w", i, err)
		}
		data[string(k)] = bytes.Clone(v)
		if data[string(k)] == nil {
			data[string(k)] = []byte{}
		}
		prev, p = k, rest
	}
	if len(p) != 0 {
		return 0, nil, "", corrupt(len(body)-len(p), "%d bytes after the last entry", len(p))
	}
	sum := sha256.New()
	sum.Write(body)
	return rev, data, fingerprint(rev, sum), nil
}

// syncDir fsyncs a directory, making renames and new names in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: open directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: fsync directory %s: %w", dir, err)
	}
	return nil
}
