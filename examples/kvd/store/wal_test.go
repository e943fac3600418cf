package store

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	tests := []record{
		{op: opPut, rev: 1, key: "k", value: []byte("v")},
		{op: opPut, rev: 1 << 40, key: "empty value", value: []byte{}},
		{op: opPut, rev: 2, key: string(make([]byte, MaxKeyLen)), value: make([]byte, MaxValueLen)},
		{op: opDelete, rev: 3, key: "gone"},
	}
	for _, want := range tests {
		buf := appendRecord(nil, want)
		if len(buf) > want.encodedLen() {
			t.Errorf("record of %d bytes exceeds encodedLen %d", len(buf), want.encodedLen())
		}
		var got []record
		res, err := replay(bytes.NewReader(buf), 0, int64(len(buf)), "log", 0, tailCut, func(_ int64, r record) error {
			got = append(got, r)
			return nil
		})
		if err != nil || res.torn || res.validEnd != int64(len(buf)) || len(got) != 1 {
			t.Fatalf("replay of one record = %+v, %v, %d records", res, err, len(got))
		}
		r := got[0]
		if r.op != want.op || r.rev != want.rev || r.key != want.key || !bytes.Equal(r.value, want.value) {
			t.Errorf("round trip of %d-byte key, %d-byte value changed the record", len(want.key), len(want.value))
		}
	}
}

// FuzzReplay feeds arbitrary bytes to the log reader: it must not panic,
// and whatever it accepts must lie within the input and re-encode to the
// same bytes.
func FuzzReplay(f *testing.F) {
	var valid []byte
	valid = appendRecord(valid, record{op: opPut, rev: 1, key: "a", value: []byte("1")})
	valid = appendRecord(valid, record{op: opDelete, rev: 2, key: "a"})
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add(append(bytes.Clone(valid), make([]byte, 20)...))
	f.Add([]byte{})
	// Three acknowledged records, then a batch of three zeroed from byte
	// 100 on, and the same batch with a hole and its last record cut short.
	var acked []byte
	for rev := range uint64(3) {
		acked = appendRecord(acked, record{op: opPut, rev: rev + 1, key: fmt.Sprintf("k%02d", rev), value: []byte("value-0")})
	}
	var batch []byte
	for rev := range uint64(3) {
		batch = appendRecord(batch, record{op: opPut, rev: rev + 4, key: fmt.Sprintf("k%02d", rev+3), value: []byte("value-0")})
	}
	zeroed := append(bytes.Clone(acked), batch...)
	clear(zeroed[100:])
	f.Add(zeroed)
	holed := append(bytes.Clone(acked), batch[:len(batch)-5]...)
	clear(holed[len(acked)+20 : len(acked)+50])
	f.Add(holed)
	f.Fuzz(func(t *testing.T, log []byte) {
		var again []byte
		res, err := replay(bytes.NewReader(log), 0, int64(len(log)), "log", 0, tailCut, func(_ int64, r record) error {
			again = appendRecord(again, r)
			return nil
		})
		var ce *CorruptError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("replay of an in-memory log failed with %v, want nil or a *CorruptError", err)
		}
		if err != nil {
			return
		}
		if res.validEnd > int64(len(log)) || (!res.torn && res.validEnd != int64(len(log))) {
			t.Fatalf("replay result %+v for %d bytes", res, len(log))
		}
		if res.torn && int64(len(log))-res.validEnd > maxBatchBytes {
			t.Fatalf("replay cut %d bytes, more than one batch", int64(len(log))-res.validEnd)
		}
		if !bytes.Equal(again, log[:res.validEnd]) {
			t.Fatalf("accepted records do not re-encode to the accepted bytes")
		}
		// Read without the lock, the same bytes give a prefix of that: the
		// warm-up stops at the first record that is not complete, and
		// never fails where recovery does not.
		var warm []byte
		wres, werr := replay(bytes.NewReader(log), 0, int64(len(log)), "log", 0, tailStop, func(_ int64, r record) error {
			warm = appendRecord(warm, r)
			return nil
		})
		if werr != nil && !errors.As(werr, &ce) {
			t.Fatalf("warm replay failed with %v", werr)
		}
		if werr == nil && (wres.validEnd > res.validEnd || !bytes.Equal(warm, log[:wres.validEnd])) {
			t.Fatalf("warm replay accepted %d bytes, recovery %d", wres.validEnd, res.validEnd)
		}
	})
}
