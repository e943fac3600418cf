package wire

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// TestConnsEntries: the packed entries of a Conns message round-trip,
// listeners are listed once each, and a malformed entry is refused with
// its position.
func TestConnsEntries(t *testing.T) {
	metas := []ConnMeta{
		{Listener: "127.0.0.1:8080"},
		{Listener: "127.0.0.1:6379", State: []byte(`{"db":3}`)},
		{Listener: "127.0.0.1:8080", State: bytes.Repeat([]byte{7}, MaxConnState)},
		{Listener: "/run/kvd.sock"},
	}
	m := EncodeConns(metas)
	if want := []string{"127.0.0.1:8080", "127.0.0.1:6379", "/run/kvd.sock"}; !slices.Equal(m.Listeners, want) {
		t.Errorf("listeners %q, want %q", m.Listeners, want)
	}
	got, err := m.Decode()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(metas) {
		t.Fatalf("%d entries, want %d", len(got), len(metas))
	}
	for i := range metas {
		if got[i].Listener != metas[i].Listener || !bytes.Equal(got[i].State, metas[i].State) {
			t.Errorf("entry %d: %q %d bytes, want %q %d bytes", i, got[i].Listener, len(got[i].State), metas[i].Listener, len(metas[i].State))
		}
	}
	if got, err := (Conns{}).Decode(); err != nil || len(got) != 0 {
		t.Errorf("empty Conns: %v, %v", got, err)
	}
	for _, tc := range []struct {
		name string
		m    Conns
		want string
	}{
		{"listener out of range", Conns{Listeners: []string{"a"}, Entries: []byte{0, 0, 1, 0}}, "entry 1: listener 1 of 1"},
		{"truncated index", Conns{Listeners: []string{"a"}, Entries: []byte{0x80}}, "entry 0: bad listener index"},
		{"missing state length", Conns{Listeners: []string{"a"}, Entries: []byte{0}}, "entry 0: bad state length"},
		{"state past the end", Conns{Listeners: []string{"a"}, Entries: []byte{0, 3, 'x'}}, "entry 0: state of 3 bytes, 1 left"},
		{"state too large", Conns{Listeners: []string{"a"}, Entries: []byte{0, 0x81, 0x80, 0x01}}, "at most 16384"},
		{"no listeners", Conns{Entries: []byte{0, 0}}, "entry 0: listener 0 of 0"},
	} {
		if _, err := tc.m.Decode(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// FuzzConnsEntries: Decode never panics, and what it accepts encodes back
// to entries that decode the same.
func FuzzConnsEntries(f *testing.F) {
	f.Add("127.0.0.1:8080", "/run/x.sock", EncodeConns([]ConnMeta{{Listener: "127.0.0.1:8080"}, {Listener: "/run/x.sock", State: []byte("st")}}).Entries)
	f.Add("a", "", []byte{0, 0x80})
	f.Fuzz(func(t *testing.T, l1, l2 string, entries []byte) {
		m := Conns{Listeners: []string{l1, l2}, Entries: entries}
		metas, err := m.Decode()
		if err != nil {
			return
		}
		again, err := EncodeConns(metas).Decode()
		if err != nil {
			t.Fatalf("re-encoded entries do not decode: %v", err)
		}
		if len(again) != len(metas) {
			t.Fatalf("%d entries, then %d", len(metas), len(again))
		}
		for i := range metas {
			if again[i].Listener != metas[i].Listener || !bytes.Equal(again[i].State, metas[i].State) {
				t.Fatalf("entry %d changed: %+v, then %+v", i, metas[i], again[i])
			}
		}
	})
}
