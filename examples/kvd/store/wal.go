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
	crc   uint32 // the checksum it was read with (set by replay only)
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
	torn     bool  // bytes after validEnd are a torn tail (or, tailStop, not complete yet)
}

// minRecordLen is the length of the shortest record.
const minRecordLen = recordHeaderLen + minPayload

// tailMode says what damage in a segment means.
type tailMode int

const (
	// tailCut: the last segment, read by the lock holder. Damage is a torn
	// tail, cut off, or corruption; see damagedAt.
	tailCut tailMode = iota
	// tailStop: the last segment, read without the lock while its writer
	// may be in the middle of a batch. Reading stops at the first record
	// that is not complete and intact; that is not an error.
	tailStop
	// tailNone: a closed segment. It was complete before the next one was
	// created, so any damage is corruption.
	tailNone
)

// replay reads the records of a log segment from offset start to size
// and hands each to apply with its offset. last is the highest revision
// known durable before start (the snapshot's, or the last record's). What
// damage means depends on mode. Damage that is not a torn tail fails with a
// *CorruptError naming the offset.
func replay(r io.ReaderAt, start, size int64, path string, last uint64, mode tailMode, apply func(off int64, rec record) error) (replayResult, error) {
	damaged := func(off int64, why error) (replayResult, error) {
		switch mode {
		case tailStop:
			return replayResult{validEnd: off, torn: true}, nil
		case tailNone:
			return replayResult{}, &CorruptError{Path: path, Offset: off, Err: fmt.Errorf("%w in a closed segment, which is complete", why)}
		default:
			return damagedAt(r, off, size, last, path, why)
		}
	}
	br := bufio.NewReaderSize(io.NewSectionReader(r, start, size-start), 1<<16)
	var hdr [recordHeaderLen]byte
	var payload []byte
	off := start
	for off < size {
		if size-off < recordHeaderLen {
			return damaged(off, fmt.Errorf("%d bytes, too few for a record header", size-off))
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return replayResult{}, fmt.Errorf("store: read %s at offset %d: %w", path, off, err)
		}
		n := int64(binary.LittleEndian.Uint32(hdr[:4]))
		sum := binary.LittleEndian.Uint32(hdr[4:])
		if n < minPayload || n > maxPayload {
			return damaged(off, fmt.Errorf("invalid record length %d", n))
		}
		end := off + recordHeaderLen + n
		if end > size {
			return damaged(off, fmt.Errorf("record of %d bytes overruns the end of the log", n))
		}
		if int64(cap(payload)) < n {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(br, payload); err != nil {
			return replayResult{}, fmt.Errorf("store: read %s at offset %d: %w", path, off, err)
		}
		if crc32.Checksum(payload, castagnoli) != sum {
			return damaged(off, errors.New("checksum mismatch"))
		}
		rec, err := decodePayload(payload)
		if err != nil {
			// The checksum matched: this was written like this.
			return replayResult{}, &CorruptError{Path: path, Offset: off, Err: err}
		}
		rec.crc = sum
		if err := apply(off, rec); err != nil {
			return replayResult{}, err
		}
		last = max(last, rec.rev)
		off = end
	}
	return replayResult{validEnd: off}, nil
}

// damagedAt decides whether the log from the damaged record at off to its
// end is a torn tail, which recovery cuts off, or corruption, which fails
// Open with a *CorruptError naming off and why.
//
// A crash can tear only the batch being committed: batches are written
// one at a time, each after the previous one's fsync returned, and a
// write is acknowledged only after its batch's fsync. Everything before
// that batch is durable, and nothing in it was acknowledged. So damage
// at off is a torn tail when both hold, and corruption otherwise:
//
//   - the bytes from off to the end fit in one batch (maxBatchBytes), and
//   - no intact record continuing the revisions follows the damage.
//
// The second rule keeps every acknowledged write: damage followed by
// intact later records is corruption of durable data unless those records
// belong to the same unacknowledged batch, and the log cannot tell the
// two apart, so Open refuses it. Zeros, a partial record or garbage to
// the end of the file are torn tails wherever inside the batch they start.
func damagedAt(r io.ReaderAt, off, size int64, last uint64, path string, why error) (replayResult, error) {
	if size-off > maxBatchBytes {
		return replayResult{}, &CorruptError{Path: path, Offset: off, Err: fmt.Errorf(
			"%w, %d bytes before the end of the log, more than the one batch a crash can tear", why, size-off)}
	}
	tail := make([]byte, size-off)
	if _, err := r.ReadAt(tail, off); err != nil {
		return replayResult{}, fmt.Errorf("store: read %s at offset %d: %w", path, off, err)
	}
	if p, rev, ok := continuation(tail, last); ok {
		return replayResult{}, &CorruptError{Path: path, Offset: off, Err: fmt.Errorf(
			"%w, and an intact record of revision %d follows at offset %d", why, rev, off+int64(p))}
	}
	return replayResult{validEnd: off, torn: true}, nil
}

// continuation looks for an intact record starting after the first byte
// of tail (the damaged record) whose revision could follow last: the
// first revision missing is last+1, and every record takes at least
// minRecordLen bytes, so a record at p has a revision of at most
// last+1+p/minRecordLen. Older revisions (stale file contents) do not
// count.
func continuation(tail []byte, last uint64) (p int, rev uint64, ok bool) {
	for p = 1; p+minRecordLen <= len(tail); p++ {
		n := int(binary.LittleEndian.Uint32(tail[p:]))
		if n < minPayload || n > maxPayload || n > len(tail)-p-recordHeaderLen {
			continue
		}
		payload := tail[p+recordHeaderLen : p+recordHeaderLen+n]
		rev = binary.LittleEndian.Uint64(payload[1:9])
		if rev <= last || rev > last+1+uint64(p/minRecordLen) {
			continue
		}
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(tail[p+4:]) {
			continue
		}
		if _, err := decodePayload(payload); err != nil {
			continue
		}
		return p, rev, true
	}
	return 0, 0, false
}
