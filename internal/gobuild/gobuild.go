// Package gobuild builds main packages of a module into a directory,
// from the working tree or from a commit extracted with git archive, for
// the commands that run what they build (handoff-bench, handoff-soak).
package gobuild

import (
	"archive/tar"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrNoModule is returned by ModuleRoot when the go command finds no
// module.
var ErrNoModule = errors.New("gobuild: not inside a module")

// ModuleRoot returns the directory of the main module of the go command
// run in dir ("" for the current directory).
func ModuleRoot(ctx context.Context, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "env", "GOMOD")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", ErrNoModule
	}
	return filepath.Dir(mod), nil
}

// Git runs git with args in dir and returns its output, trimmed; its
// error holds git's standard error.
func Git(ctx context.Context, dir string, args ...string) (string, error) {
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

// Extract resolves rev in the repository at repo and writes the files of
// that commit into dir (git archive), without touching the repository or
// its working tree. It returns the commit's full hash.
func Extract(ctx context.Context, repo, rev, dir string) (string, error) {
	commit, err := Git(ctx, repo, "rev-parse", "--verify", rev+"^{commit}")
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "git", "archive", "--format=tar", commit)
	cmd.Dir = repo
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("git archive: %w", err)
	}
	xerr := untar(out, dir)
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("git archive %s: %w: %s", commit, err, strings.TrimSpace(stderr.String()))
	}
	if xerr != nil {
		return "", fmt.Errorf("extract git archive %s: %w", commit, xerr)
	}
	return commit, nil
}

// untar writes the directories, regular files and symbolic links of a
// tar stream (what git archive writes) under dst.
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
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			err = writeFile(p, tr, os.FileMode(h.Mode&0o777)|0o600)
		case tar.TypeSymlink:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.Symlink(h.Linkname, p)
			}
		}
		if err != nil {
			return err
		}
	}
}

func writeFile(path string, r io.Reader, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	return errors.Join(err, f.Close())
}

// Build runs go build in src, the root of a module, for the packages
// pkgs, with the linker flags ldflags ("" for none), writing the binary
// to out (a directory ending in a path separator for several packages).
//
// -trimpath lets the build cache serve a commit extracted into a new
// directory each run; -buildvcs=auto has a build in a working tree
// record its revision (Revision), whatever GOFLAGS says.
func Build(ctx context.Context, src, out, ldflags string, pkgs ...string) error {
	args := []string{"build", "-buildvcs=auto", "-trimpath", "-o", out}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkgs...)...)
	cmd.Dir = src
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, msg)
	}
	return nil
}

// Revision returns the VCS revision the go command recorded in the
// binary bin ("unknown" if none), and whether the tree had uncommitted
// changes.
func Revision(bin string) (rev string, modified bool, err error) {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "", false, fmt.Errorf("build information: %w", err)
	}
	rev = "unknown"
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	return rev, modified, nil
}
