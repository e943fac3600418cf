package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// binaries are the programs a soak runs, built into one directory.
type binaries struct {
	dir        string
	supervisor string
	kvd        [2]string // soak-v1, soak-v2: handoffs alternate between them
}

// buildIDs are the build ids linked into the two kvd binaries.
var buildIDs = [2]string{"soak-v1", "soak-v2"}

// source says what was built: a commit, or the working tree at a commit.
type source struct {
	Commit string `json:"commit"`
	// Tree is "git archive" for -rev, else "working tree" and whether it
	// had uncommitted changes.
	Tree string `json:"tree"`
}

// moduleRoot finds the handoff module from the current directory.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run handoff-soak from inside the handoff module (go run ./cmd/handoff-soak)")
	}
	return filepath.Dir(mod), nil
}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// prepareSource returns the directory to build in and what it holds:
// root itself, or for rev a copy of that commit extracted under work.
func prepareSource(ctx context.Context, root, rev, work string) (string, source, error) {
	if rev == "" {
		commit, err := git(ctx, root, "rev-parse", "HEAD")
		if err != nil {
			return root, source{Commit: "unknown", Tree: "working tree (not a git checkout?)"}, nil
		}
		tree := "working tree, clean"
		if st, err := git(ctx, root, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
			tree = fmt.Sprintf("working tree with uncommitted changes to %d tracked files", len(strings.Split(st, "\n")))
		}
		return root, source{Commit: commit, Tree: tree}, nil
	}
	commit, err := git(ctx, root, "rev-parse", "--verify", rev+"^{commit}")
	if err != nil {
		return "", source{}, fmt.Errorf("-rev %s: %w", rev, err)
	}
	dst := filepath.Join(work, "src")
	if err := os.RemoveAll(dst); err != nil {
		return "", source{}, err
	}
	cmd := exec.CommandContext(ctx, "git", "archive", "--format=tar", commit)
	cmd.Dir = root
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", source{}, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", source{}, fmt.Errorf("git archive: %w", err)
	}
	xerr := untar(out, dst)
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return "", source{}, fmt.Errorf("git archive %s: %w: %s", commit, err, strings.TrimSpace(stderr.String()))
	}
	if xerr != nil {
		return "", source{}, fmt.Errorf("extract git archive %s: %w", commit, xerr)
	}
	return dst, source{Commit: commit, Tree: "git archive of the commit"}, nil
}

// untar extracts the regular files and directories of a tar stream (what
// git archive writes) under dst.
func untar(r io.Reader, dst string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if !filepath.IsLocal(name) {
			return fmt.Errorf("archive entry %q leaves the directory", h.Name)
		}
		p := filepath.Join(dst, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, os.FileMode(h.Mode&0o777)|0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		}
	}
}

// build compiles the supervisor and kvd soak-v1 in one go build (the
// packages they share compile once), then kvd soak-v2.
func build(ctx context.Context, src, dir string) (binaries, error) {
	b := binaries{
		dir:        dir,
		supervisor: filepath.Join(dir, "handoff-supervisor"),
		kvd:        [2]string{filepath.Join(dir, "kvd-v1"), filepath.Join(dir, "kvd-v2")},
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return b, err
	}
	goBuild := func(out, ldflags string, pkgs ...string) error {
		cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", out, "-ldflags", ldflags}, pkgs...)...)
		cmd.Dir = src
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, msg)
		}
		return nil
	}
	// The supervisor has no main.buildID; the linker ignores the -X there.
	if err := goBuild(dir+string(filepath.Separator), "-X main.buildID="+buildIDs[0], "./cmd/handoff-supervisor", "./examples/kvd"); err != nil {
		return b, err
	}
	if err := os.Rename(filepath.Join(dir, "kvd"), b.kvd[0]); err != nil {
		return b, err
	}
	if err := goBuild(b.kvd[1], "-X main.buildID="+buildIDs[1], "./examples/kvd"); err != nil {
		return b, err
	}
	return b, nil
}
