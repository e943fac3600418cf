package store

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"testing"
)

// TestReopenAfterSuccessorWrote: the incumbent seals, a successor takes
// over, writes (and rotates, compacts, or dies in the middle of a batch)
// and goes away; the incumbent's Reopen catches up from its sealed
// position, or loads in full when the successor's compactions deleted
// segments it never read.
func TestReopenAfterSuccessorWrote(t *testing.T) {
	fill := func(t *testing.T, s *Store, prefix string, n int) {
		for i := range n {
			mustPut(t, s, fmt.Sprintf("%s%d", prefix, i), "a value long enough to fill segments")
		}
	}
	tests := []struct {
		name         string
		succ         func(t *testing.T, s *Store, dir string)
		wantFullLoad bool
		wantTorn     bool
	}{
		{"wrote nothing", func(*testing.T, *Store, string) {}, false, false},
		{"wrote in the sealed segment", func(t *testing.T, s *Store, _ string) {
			fill(t, s, "succ", 3)
			if _, err := s.Delete("inc0"); err != nil {
				t.Fatal(err)
			}
		}, false, false},
		{"rotated", func(t *testing.T, s *Store, _ string) { fill(t, s, "succ", 60) }, false, false},
		{"compacted the sealed segment", func(t *testing.T, s *Store, _ string) {
			fill(t, s, "succ", 3)
			if err := s.Compact(); err != nil {
				t.Fatal(err)
			}
			fill(t, s, "more", 3)
		}, false, false},
		{"compacted past the sealed position", func(t *testing.T, s *Store, _ string) {
			fill(t, s, "succ", 60)
			if err := s.Compact(); err != nil {
				t.Fatal(err)
			}
			fill(t, s, "more", 3)
		}, true, false},
		{"died in the middle of a batch", func(t *testing.T, s *Store, dir string) {
			fill(t, s, "succ", 3)
			active := filepath.Join(dir, s.Stats().ActiveSegment)
			rev := s.Revision()
			s.Close()
			appendBytes(t, active, unackedBatch(rev+1, 3)[:30]) // not one complete record
		}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := smallSegments(1<<10, false)
			inc := openT(t, dir, opts)
			fill(t, inc, "inc", 10)
			w, err := Prepare(dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := inc.Seal(); err != nil {
				t.Fatal(err)
			}
			sealedFP := inc.Fingerprint()
			succ := warmOpenT(t, w, opts)
			if succ.Fingerprint() != sealedFP {
				t.Errorf("successor's fingerprint %s, sealed %s", succ.Fingerprint(), sealedFP)
			}
			tt.succ(t, succ, dir)
			succ.Close()
			want, wantRev, wantFP := contents(succ), succ.Revision(), succ.Fingerprint()

			for range 2 { // idempotent
				if err := inc.Reopen(); err != nil {
					t.Fatalf("Reopen: %v", err)
				}
			}
			if got := contents(inc); inc.Revision() != wantRev || !maps.Equal(got, want) {
				t.Errorf("after Reopen at revision %d with %d keys, the successor left %d with %d", inc.Revision(), len(got), wantRev, len(want))
			}
			if inc.Fingerprint() != wantFP {
				t.Errorf("fingerprint after Reopen %s, the successor left %s", inc.Fingerprint(), wantFP)
			}
			rc := inc.Recovery()
			if rc.FullLoad != tt.wantFullLoad || (rc.TornTailBytes > 0) != tt.wantTorn {
				t.Errorf("Recovery = %+v, want full load %v, torn tail %v", rc, tt.wantFullLoad, tt.wantTorn)
			}
			if !rc.FullLoad && rc.CaughtUpRecords != int(wantRev-10) {
				t.Errorf("caught up %d records, the successor wrote %d", rc.CaughtUpRecords, wantRev-10)
			}
			if next := mustPut(t, inc, "resumed", "x"); next != wantRev+1 {
				t.Errorf("first revision after Reopen = %d, want %d", next, wantRev+1)
			}
			if err := inc.Check(); err != nil {
				t.Errorf("Check after Reopen: %v", err)
			}
			if err := inc.Compact(); err != nil {
				t.Errorf("Compact after Reopen: %v", err)
			}
		})
	}
}

// TestReopenFailureThenFullLoad: a Reopen that finds damage fails and
// leaves the store sealed; once the damage is gone, the next Reopen loads
// the directory in full.
func TestReopenFailureThenFullLoad(t *testing.T) {
	dir := t.TempDir()
	opts := smallSegments(512, false)
	inc := openT(t, dir, opts)
	mustPut(t, inc, "a", "1")
	if err := inc.Seal(); err != nil {
		t.Fatal(err)
	}
	succ := openT(t, dir, opts)
	for i := range 40 {
		mustPut(t, succ, fmt.Sprintf("succ%d", i), "a value of some length")
	}
	succ.Close()
	path := filepath.Join(dir, LogFileName) // closed by the successor's rotation
	off := fileSize(t, path) - 10
	flipByte(t, path, off)
	if err := inc.Reopen(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), LogFileName) {
		t.Fatalf("Reopen over a damaged segment = %v, want ErrCorrupt naming it", err)
	}
	if !inc.Sealed() {
		t.Fatal("a failed Reopen left the store unsealed")
	}
	if _, err := inc.Put("x", nil); !errors.Is(err, ErrSealed) {
		t.Errorf("Put after a failed Reopen = %v, want ErrSealed", err)
	}
	flipByte(t, path, off) // repaired
	if err := inc.Reopen(); err != nil {
		t.Fatal(err)
	}
	if rc := inc.Recovery(); !rc.FullLoad || inc.Revision() != 41 || !maps.Equal(contents(inc), contents(succ)) {
		t.Errorf("after the second Reopen: revision %d, %+v; want the successor's 41, loaded in full", inc.Revision(), rc)
	}
}
