package fdutil

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestGrowTable: growing the table opens nothing that stays open and never
// replaces a descriptor in use at the slot it probes.
func TestGrowTable(t *testing.T) {
	before, err := OpenCount(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := GrowTable(500); err != nil {
		t.Fatal(err)
	}
	if after, _ := OpenCount(os.Getpid()); after != before {
		t.Fatalf("%d descriptors open after GrowTable, %d before", after, before)
	}
	// A descriptor already in the slot GrowTable would use stays.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	open, _ := OpenCount(os.Getpid())
	target := open + 1 + 200 // where GrowTable(200) probes once this one is open too
	if err := unix.Dup3(int(w.Fd()), target, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(target)
	if err := GrowTable(200); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(target, []byte("x")); err != nil {
		t.Fatalf("descriptor %d after GrowTable: %v", target, err)
	}
	b := make([]byte, 1)
	if n, err := r.Read(b); n != 1 || err != nil {
		t.Fatalf("read %d, %v", n, err)
	}
}
