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

// Limits on what one record may hold.
const (
	MaxKeyLen   = 1 << 10 // bytes
	MaxValueLen = 1 << 20 // bytes
)

const (
	opPut    byte = 1
	opDelete byte = 2

	recordHeaderLen = 8 // length, crc
	minPayload      = 1 + 8 + 1
	maxPayload      = 1 + 8 + 2*binary.MaxVarintLen64 + MaxKeyLen + MaxValueLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// record is one logged write.
type record struct {
	op    byte
	rev   uint64
	key   string
	value []byte // put only
}

// encodedLen is an upper bound of the bytes appendRecord adds for r.
func (r record) encodedLen() int {
	return recordHeaderLen + 1 + 8 + 2*binary.MaxVarintLen64 + len(r.key) + len(r.value)
}

// appendRecord appends r, framed with its length and checksum, to dst.
func appendRecord(dst []byte, r record) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, recordHeaderLen)...)
	dst = append(dst, r.op)
	dst = binary.LittleEndian.AppendUint64(dst, r.rev)
	dst = binary.AppendUvarint(dst, uint64(len(r.key)))
	dst = append(dst, r.key...)
	if r.op == opPut {
		dst = binary.AppendUvarint(dst, uint64(len(r.value)))
		dst = append(dst, r.value...)
	}
	payload := dst[start+recordHeaderLen:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(payload, castagnoli))
	return dst
}

// decodePayload decodes a payload whose checksum was verified. The value
// is copied out of p.
func decodePayload(p []byte) (record, error) {
	if len(p) < minPayload {
		return record{}, fmt.Errorf("payload of %d bytes is too short", len(p))
	}
	r := record{op: p[0], rev: binary.LittleEndian.Uint64(p[1:9])}
	if r.rev == 0 {
		return record{}, errors.New("revision 0")
	}
	key, rest, err := uvarintBytes(p[9:], MaxKeyLen)
	if err != nil {
		return record{}, fmt.Errorf("key: %w", err)
	}
	if len(key) == 0 {
		return record{}, errors.New("empty key")
	}
	r.key = string(key)
	switch r.op {
	case opPut:
		var v []byte
		if v, rest, err = uvarintBytes(rest, MaxValueLen); err != nil {
			return record{}, fmt.Errorf("value: %w", err)
		}
		r.value = bytes.Clone(v)
		if r.value == nil {
			r.value = []byte{}
		}
	case opDelete:
	default:
		return record{}, fmt.Errorf("unknown operation %d", r.op)
	}
	if len(rest) != 0 {
		return record{}, fmt.Errorf("%d trailing bytes", len(rest))
	}
	return r, nil
}

// uvarintBytes reads a uvarint length n (at most limit) and n bytes.
func uvarintBytes(p []byte, limit uint64) (field, rest []byte, err error) {
	n, k := binary.Uvarint(p)
	if k <= 0 {
		return nil, nil, errors.New("bad length")
	}
	if k != uvarintLen(n) {
		return nil, nil, errors.New("length not minimally encoded")
	}
	if n > limit {
		return nil, nil, fmt.Errorf("length %d exceeds %d", n, limit)
	}
	if n > uint64(len(p)-k) {
		return nil, nil, fmt.Errorf("length %d overruns the payload", n)
	}
	return p[k : k+int(n)], p[k+int(n):], nil
}

func uvarintLen(n uint64) int {
	k := 1
	for ; n >= 0x80; n >>= 7 {
		k++
	}
	return k
}

// replayResult is what replay found.
type replayResult struct {
	validEnd int64 // offset just past the last good record
	torn     bool  // bytes after validEnd are a torn tail
}

// replay reads the records of a log of size bytes from r and hands each to
// apply with its offset. It stops at a torn tail (reported, not an error)
// and fails with a *CorruptError on damage elsewhere.
func replay(r io.Reader, size int64, path string, apply func(off int64, rec record) error) (replayResult, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	var hdr [recordHeaderLen]byte
	var payload []byte
	var off int64
	for off < size {
		if size-off < recordHeaderLen {
			return replayResult{validEnd: off, torn: true}, nil
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return replayResult{}, fmt.Errorf("store: read %s at offset %d: %w", path, off, err)
		}
		n := int64(binary.LittleEndian.Uint32(hdr[:4]))
		sum := binary.LittleEndian.Uint32(hdr[4:])
		if n < minPayload || n > maxPayload {
			zero, err := zeroTail(hdr[:], br)
			if err != nil {
				return replayResult{}, fmt.Errorf("store: read %s at offset %d: %w", path, off, err)
			}
			if zero {
				return replayResult{validEnd: off, torn: true}, nil
			}
			return replayResult{}, &CorruptError{Path: path, Offset: off, Err: fmt.Errorf("invalid record length %d", n)}
		}
		end := off + recordHeaderLen + n
		if end > size {
			return replayResult{validEnd: off, torn: true}, nil
		}
		if int64(cap(payload)) < n {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(br, payload); err != nil {
			return replayResult{}, fmt.Errorf("store: read %s at offset %d: %w", path, off, err)
		}
		if crc32.Checksum(payload, castagnoli) != sum {
			if end == size {
				return replayResult{validEnd: off, torn: true}, nil
			}
			return replayResult{}, &CorruptError{Path: path, Offset: off, Err: errors.New("checksum mismatch")}
		}
		rec, err := decodePayload(payload)
		if err != nil {
			return replayResult{}, &CorruptError{Path: path, Offset: off, Err: err}
		}
		if err := apply(off, rec); err != nil {
			return replayResult{}, err
		}
		off = end
	}
	return replayResult{validEnd: off}, nil
}

// zeroTail reports whether head and everything left in r are zero bytes.
func zeroTail(head []byte, r io.Reader) (bool, error) {
	if !allZero(head) {
		return false, nil
	}
	buf := make([]byte, 1<<16)
	for {
		n, err := r.Read(buf)
		if !allZero(buf[:n]) {
			return false, nil
		}
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
