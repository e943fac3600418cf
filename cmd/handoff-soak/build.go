package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/handoff-go/handoff/internal/gobuild"
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
	root, err := gobuild.ModuleRoot(ctx, "")
	if errors.Is(err, gobuild.ErrNoModule) {
		return "", errors.New("run handoff-soak from inside the handoff module (go run ./cmd/handoff-soak)")
	}
	return root, err
}

// prepareSource returns the directory to build in and what it holds:
// root itself, or for rev a copy of that commit extracted under work.
func prepareSource(ctx context.Context, root, rev, work string) (string, source, error) {
	if rev == "" {
		commit, err := gobuild.Git(ctx, root, "rev-parse", "HEAD")
		if err != nil {
			return root, source{Commit: "unknown", Tree: "working tree (not a git checkout?)"}, nil
		}
		tree := "working tree, clean"
		if st, err := gobuild.Git(ctx, root, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
			tree = fmt.Sprintf("working tree with uncommitted changes to %d tracked files", len(strings.Split(st, "\n")))
		}
		return root, source{Commit: commit, Tree: tree}, nil
	}
	dst := filepath.Join(work, "src")
	if err := os.RemoveAll(dst); err != nil {
		return "", source{}, err
	}
	commit, err := gobuild.Extract(ctx, root, rev, dst)
	if err != nil {
		return "", source{}, fmt.Errorf("-rev %s: %w", rev, err)
	}
	return dst, source{Commit: commit, Tree: "git archive of the commit"}, nil
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
	// The supervisor has no main.buildID; the linker ignores the -X there.
	if err := gobuild.Build(ctx, src, dir+string(filepath.Separator), "-X main.buildID="+buildIDs[0], "./cmd/handoff-supervisor", "./examples/kvd"); err != nil {
		return b, err
	}
	if err := os.Rename(filepath.Join(dir, "kvd"), b.kvd[0]); err != nil {
		return b, err
	}
	if err := gobuild.Build(ctx, src, b.kvd[1], "-X main.buildID="+buildIDs[1], "./examples/kvd"); err != nil {
		return b, err
	}
	return b, nil
}
