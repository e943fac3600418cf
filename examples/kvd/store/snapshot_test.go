package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// encodeSnapshotV1 writes data at rev in the format the single-file
// layout wrote (and the store still reads): header with the count,
// entries, CRC-32C.
func encodeSnapshotV1(rev uint64, data map[string]string) []byte {
	b := []byte(snapMagicV1)
	b = binary.LittleEndian.AppendUint64(b, rev)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(data)))
	for _, k := range slices.Sorted(maps.Keys(data)) {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(data[k])))
		b = append(b, data[k]...)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// encodeSnapshotV2 writes data at rev as the compactor does.
func encodeSnapshotV2(t testing.TB, rev uint64, data map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	sw := newSnapWriter(&buf, rev)
	for _, k := range slices.Sorted(maps.Keys(data)) {
		if err := sw.add([]byte(k), []byte(data[k])); err != nil {
			t.Fatal(err)
		}
	}
	if err := sw.finish(); err != nil {
		t.Fatal(err)
	}
	if sw.bytes != int64(buf.Len()) {
		t.Fatalf("snapWriter counted %d bytes, wrote %d", sw.bytes, buf.Len())
	}
	return buf.Bytes()
}

// decodeSnapshot reads a whole snapshot from b.
func decodeSnapshot(b []byte) (rev uint64, version int, data map[string]string, err error) {
	sr, err := newSnapReader(bytes.NewReader(b), "snap")
	if err != nil {
		return 0, 0, nil, err
	}
	data = map[string]string{}
	for {
		k, v, ok, err := sr.next()
		if err != nil {
			return 0, 0, nil, err
		}
		if !ok {
			return sr.rev, sr.version, data, nil
		}
		data[string(k)] = string(v)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		rev  uint64
		data map[string]string
	}{
		{"empty", 0, map[string]string{}},
		{"one", 7, map[string]string{"k": "v"}},
		{"empty value and binary key", 1 << 40, map[string]string{"\x00\xff": "", "b": "\x00\x01"}},
		{"large", 3, map[string]string{strings.Repeat("k", MaxKeyLen): strings.Repeat("v", MaxValueLen), "a": "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for version, b := range map[int][]byte{1: encodeSnapshotV1(tt.rev, tt.data), 2: encodeSnapshotV2(t, tt.rev, tt.data)} {
				rev, v, got, err := decodeSnapshot(b)
				if err != nil || rev != tt.rev || v != version || !maps.Equal(got, tt.data) {
					t.Errorf("v%d: decoded rev %d version %d, %d keys, %v; want rev %d, %d keys", version, rev, v, len(got), err, tt.rev, len(tt.data))
				}
			}
		})
	}
}

func TestSnapshotDamageIsRefused(t *testing.T) {
	data := map[string]string{"a": "1", "b": "2", "c": "3"}
	v2 := encodeSnapshotV2(t, 9, data)
	v1 := encodeSnapshotV1(9, data)
	tests := []struct {
		name string
		b    []byte
		want string // in the error
	}{
		{"v2 cut in the trailer", v2[:len(v2)-2], "ends early"},
		{"v2 cut in an entry", v2[:20], "ends early"},
		{"v2 header only", v2[:16], "ends early"},
		{"v1 cut", v1[:len(v1)-5], "ends early"},
		{"v2 flipped value byte", flipped(v2, 19), "checksum mismatch"},
		{"v1 flipped value byte", flipped(v1, 27), "checksum mismatch"},
		{"v2 trailing garbage", append(slices.Clone(v2), 0), "after the snapshot's checksum"},
		{"bad magic", append([]byte("KVDSNAP9"), v2[8:]...), "not a snapshot"},
		{"empty file", nil, "ends early"},
		{"v2 wrong count", withCRC(v2, func(b []byte) { b[len(b)-12]++ }), "trailer counts 4 entries"},
		{"v2 keys out of order", withCRC(v2, func(b []byte) { b[17] = 'z' }), "out of order"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := decodeSnapshot(tt.b)
			var ce *CorruptError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("decode = %v, want a *CorruptError saying %q", err, tt.want)
			}
		})
	}
}

func flipped(b []byte, off int) []byte {
	b = slices.Clone(b)
	b[off] ^= 0x55
	return b
}

// withCRC applies change to a copy of the snapshot b and fixes its
// checksum, so that only the change itself is wrong.
func withCRC(b []byte, change func([]byte)) []byte {
	b = slices.Clone(b)
	change(b)
	body := b[:len(b)-4]
	binary.LittleEndian.PutUint32(b[len(body):], crc32.Checksum(body, castagnoli))
	return b
}

// TestSnapshotCorruption: a damaged snapshot in place fails Open and
// Prepare with ErrCorrupt; nothing of it is loaded.
func TestSnapshotCorruption(t *testing.T) {
	dir := t.TempDir()
	opts := defaultOptions()
	s := openT(t, dir, opts)
	mustPut(t, s, "a", "1")
	mustPut(t, s, "b", "2")
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, SnapshotFileName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, len(snapMagicV2) + 9, len(b) - 1} {
		if err := os.WriteFile(path, flipped(b, off), 0o600); err != nil {
			t.Fatal(err)
		}
		if w, err := Prepare(dir); !errors.Is(err, ErrCorrupt) {
			if err == nil {
				w.Close()
			}
			t.Errorf("Prepare with the snapshot damaged at %d = %v, want ErrCorrupt", off, err)
		}
		if s, err := Open(dir); !errors.Is(err, ErrCorrupt) {
			if err == nil {
				s.Close()
			}
			t.Errorf("Open with the snapshot damaged at %d = %v, want ErrCorrupt", off, err)
		}
	}
}

// FuzzReadSnapshot feeds arbitrary bytes to the snapshot reader: it must
// not panic, and whatever it accepts must re-encode to the same bytes.
func FuzzReadSnapshot(f *testing.F) {
	data := map[string]string{"a": "1", "bb": "", "c\x00": strings.Repeat("x", 300)}
	v1, v2 := encodeSnapshotV1(5, data), encodeSnapshotV2(f, 5, data)
	f.Add(v1)
	f.Add(v2)
	f.Add(encodeSnapshotV1(0, nil))
	f.Add(encodeSnapshotV2(f, 0, nil))
	f.Add(v2[:len(v2)-1])
	f.Add(flipped(v1, 20))
	f.Add([]byte(snapMagicV2))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		rev, version, got, err := decodeSnapshot(b)
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("decode of in-memory bytes failed with %v, want nil or a *CorruptError", err)
			}
			return
		}
		again := encodeSnapshotV1(rev, got)
		if version == 2 {
			again = encodeSnapshotV2(t, rev, got)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("accepted v%d snapshot does not re-encode to the same bytes", version)
		}
	})
}
