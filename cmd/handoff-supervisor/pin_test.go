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
	p, err := openPin(path)
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

// TestPinRunning pins what a running process executes when that is the
// file at the path, and the file at the path otherwise: for a script (or
// a wrapper that execs another program) the process runs some other file,
// which must not be what a restart starts.
func TestPinRunning(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "wrapper")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec "+exe+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		pid        int
	}{
		{"the process's own binary", exe, os.Getpid()},
		{"a script the process does not run", script, os.Getpid()},
		{"no process", script, 0},
		{"a process that is gone", script, 1 << 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := pinRunning(tc.path, tc.pid)
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			want, err := openPin(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer want.close()
			if p.ino != want.ino || p.dev != want.dev || p.path != tc.path || p.replaced() {
				t.Fatalf("pinned inode %d of %s (replaced %v), want inode %d of %s", p.ino, p.path, p.replaced(), want.ino, tc.path)
			}
		})
	}
	if p, err := pinRunning(filepath.Join(t.TempDir(), "gone"), os.Getpid()); err == nil {
		p.close()
		t.Fatal("a path that names no file pinned the process's binary")
	}
}
