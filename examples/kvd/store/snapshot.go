package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Snapshot formats. Version 1 (written by the single-file layout, read
// only) holds its entry count in the header; version 2 (written by the
// compactor, which streams a merge and learns the count at the end) ends
// its entries with a zero key length and holds the count in its trailer.
const (
	snapMagicV1 = "KVDSNAP1"
	snapMagicV2 = "KVDSNAP2"
)

// snapBufSize is the buffer of snapshot reads and writes.
const snapBufSize = 1 << 20

// snapReader streams the entries of a snapshot and checks its checksum at
// the end. What next returned is only trustworthy once next has reported
// the end without an error: a torn or damaged file is noticed there at the
// latest.
type snapReader struct {
	br      *bufio.Reader
	path    string
	off     int64 // bytes consumed
	crc     uint32
	version int
	rev     uint64
	count   uint64 // v1: the header's entry count
	n       uint64 // entries returned so far
	key     []byte // the last key returned
	spare   []byte // the buffer the next key is read into
	value   []byte
	done    bool
}

// newSnapReader reads the header of the snapshot in r; path names it in
// errors.
func newSnapReader(r io.Reader, path string) (*snapReader, error) {
	sr := &snapReader{br: bufio.NewReaderSize(r, snapBufSize), path: path}
	magic, err := sr.read(len(snapMagicV1), nil)
	if err != nil {
		return nil, err
	}
	switch string(magic) {
	case snapMagicV1:
		sr.version = 1
	case snapMagicV2:
		sr.version = 2
	default:
		return nil, sr.corrupt(0, fmt.Errorf("not a snapshot (magic %q)", magic))
	}
	if sr.rev, err = sr.uint64(); err != nil {
		return nil, err
	}
	if sr.version == 1 {
		if sr.count, err = sr.uint64(); err != nil {
			return nil, err
		}
	}
	return sr, nil
}

func (sr *snapReader) corrupt(off int64, err error) error {
	return &CorruptError{Path: sr.path, Offset: off, Err: err}
}

// read reads n bytes into buf (reallocated if too small), adding them to
// the checksum. The end of the file is corruption: a snapshot that ends
// early was torn.
func (sr *snapReader) read(n int, buf []byte) ([]byte, error) {
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(sr.br, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, sr.corrupt(sr.off, errors.New("snapshot ends early (torn or cut short)"))
		}
		return nil, fmt.Errorf("store: read %s at offset %d: %w", sr.path, sr.off, err)
	}
	sr.crc = crc32.Update(sr.crc, castagnoli, buf)
	sr.off += int64(n)
	return buf, nil
}

func (sr *snapReader) uint64() (uint64, error) {
	var b [8]byte
	p, err := sr.read(8, b[:])
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p), nil
}

// uvarint reads a minimally encoded uvarint of at most limit.
func (sr *snapReader) uvarint(limit uint64, what string) (uint64, error) {
	start := sr.off
	var n uint64
	var b [1]byte
	for i := 0; ; i++ {
		if i == binary.MaxVarintLen64 {
			return 0, sr.corrupt(start, fmt.Errorf("%s: bad length", what))
		}
		p, err := sr.read(1, b[:])
		if err != nil {
			return 0, err
		}
		if i == binary.MaxVarintLen64-1 && p[0] > 1 {
			return 0, sr.corrupt(start, fmt.Errorf("%s: bad length", what))
		}
		n |= uint64(p[0]&0x7f) << (7 * i)
		if p[0] < 0x80 {
			if p[0] == 0 && i > 0 {
				return 0, sr.corrupt(start, fmt.Errorf("%s: length not minimally encoded", what))
			}
			break
		}
	}
	if n > limit {
		return 0, sr.corrupt(start, fmt.Errorf("%s: length %d exceeds %d", what, n, limit))
	}
	return n, nil
}

// next returns the next entry in ascending key order; ok is false at the
// end, where the trailer and the checksum have been checked. key and value
// are valid until the next call.
func (sr *snapReader) next() (key, value []byte, ok bool, err error) {
	if sr.done {
		return nil, nil, false, nil
	}
	entryOff := sr.off
	if sr.version == 1 && sr.n == sr.count {
		return nil, nil, false, sr.finish()
	}
	klen, err := sr.uvarint(MaxKeyLen, fmt.Sprintf("entry %d key", sr.n))
	if err != nil {
		return nil, nil, false, err
	}
	if klen == 0 {
		if sr.version == 1 {
			return nil, nil, false, sr.corrupt(entryOff, fmt.Errorf("entry %d: empty key", sr.n))
		}
		return nil, nil, false, sr.finish()
	}
	k, err := sr.read(int(klen), sr.spare)
	if err != nil {
		return nil, nil, false, err
	}
	if sr.n > 0 && bytes.Compare(sr.key, k) >= 0 {
		return nil, nil, false, sr.corrupt(entryOff, fmt.Errorf("entry %d: keys out of order", sr.n))
	}
	sr.key, sr.spare = k, sr.key[:0]
	vlen, err := sr.uvarint(MaxValueLen, fmt.Sprintf("entry %d value", sr.n))
	if err != nil {
		return nil, nil, false, err
	}
	if sr.value, err = sr.read(int(vlen), sr.value); err != nil {
		return nil, nil, false, err
	}
	sr.n++
	return sr.key, sr.value, true, nil
}

// finish checks what follows the last entry: (v2) the count, then the
// checksum of everything before it, then the end of the file.
func (sr *snapReader) finish() error {
	if sr.version == 2 {
		countOff := sr.off
		count, err := sr.uint64()
		if err != nil {
			return err
		}
		if count != sr.n {
			return sr.corrupt(countOff, fmt.Errorf("trailer counts %d entries, the snapshot holds %d", count, sr.n))
		}
	}
	sumOff := sr.off
	want := sr.crc
	var b [4]byte
	p, err := sr.read(4, b[:])
	if err != nil {
		return err
	}
	if got := binary.LittleEndian.Uint32(p); got != want {
		return sr.corrupt(sumOff, errors.New("snapshot checksum mismatch"))
	}
	if _, err := sr.br.ReadByte(); err == nil {
		return sr.corrupt(sr.off, errors.New("bytes after the snapshot's checksum"))
	} else if !errors.Is(err, io.EOF) {
		return fmt.Errorf("store: read %s at offset %d: %w", sr.path, sr.off, err)
	}
	sr.done = true
	return nil
}

// snapWriter streams a version 2 snapshot to w.
type snapWriter struct {
	bw    *bufio.Writer
	crc   uint32
	n     uint64
	prev  []byte
	buf   []byte
	bytes int64
}

func newSnapWriter(w io.Writer, rev uint64) *snapWriter {
	sw := &snapWriter{bw: bufio.NewWriterSize(w, snapBufSize)}
	sw.write(binary.LittleEndian.AppendUint64([]byte(snapMagicV2), rev))
	return sw
}

func (sw *snapWriter) write(p []byte) {
	sw.crc = crc32.Update(sw.crc, castagnoli, p)
	sw.bytes += int64(len(p))
	sw.bw.Write(p) // a write error sticks in bw and is returned by Flush
}

// add appends an entry. Keys must come in strictly ascending order.
func (sw *snapWriter) add(key, value []byte) error {
	if len(key) == 0 || len(key) > MaxKeyLen || len(value) > MaxValueLen {
		return fmt.Errorf("store: snapshot entry with a %d-byte key and a %d-byte value", len(key), len(value))
	}
	if sw.n > 0 && bytes.Compare(sw.prev, key) >= 0 {
		return fmt.Errorf("store: snapshot keys out of order: %q after %q", key, sw.prev)
	}
	sw.prev = append(sw.prev[:0], key...)
	sw.buf = binary.AppendUvarint(sw.buf[:0], uint64(len(key)))
	sw.buf = append(sw.buf, key...)
	sw.buf = binary.AppendUvarint(sw.buf, uint64(len(value)))
	sw.write(sw.buf)
	sw.write(value)
	sw.n++
	return nil
}

// flush writes what is buffered.
func (sw *snapWriter) flush() error { return sw.bw.Flush() }

// finish writes the end marker, the count and the checksum, and flushes.
func (sw *snapWriter) finish() error {
	sw.write(binary.LittleEndian.AppendUint64([]byte{0}, sw.n))
	sum := binary.LittleEndian.AppendUint32(nil, sw.crc)
	sw.bytes += int64(len(sum))
	sw.bw.Write(sum)
	return sw.bw.Flush()
}
