package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestPinnedBinary: once the file at the path is replaced (renamed over),
// the pin says so and starts the file that was pinned, through its
// descriptor.
func TestPinnedBinary(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d")
	if err := os.WriteFile(path, []byte("good"), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := pinBinary(path, 0) // no process: pins the file at path
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if p.replaced() || p.exe() != path {
		t.Fatalf("fresh pin: replaced %v, exe %s", p.replaced(), p.exe())
	}
	tmp := filepath.Join(dir, ".d.new")
	if err := os.WriteFile(tmp, []byte("bad"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if !p.replaced() || p.exe() == path {
		t.Fatalf("after the rename: replaced %v, exe %s", p.replaced(), p.exe())
	}
	if got, err := os.ReadFile(p.exe()); err != nil || string(got) != "good" {
		t.Fatalf("%s holds %q (%v), want the pinned content", p.exe(), got, err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if !p.replaced() {
		t.Fatal("a removed path counts as not replaced")
	}
}

// TestPinBinaryFromProcess pins what a process runs, not the path.
func TestPinBinaryFromProcess(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := pinBinary("/nonexistent", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	want, err := pinBinary(exe, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer want.close()
	if p.ino != want.ino || p.dev != want.dev {
		t.Fatalf("pinned inode %d, want the test binary's %d", p.ino, want.ino)
	}
}
