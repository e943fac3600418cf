package gobuild

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// writeModule writes a module with one main package, which prints the
// buildID linked into it, into dir.
func writeModule(t *testing.T, dir string) {
	t.Helper()
	files := map[string]string{
		"go.mod":           "module example.com/tiny\n\ngo 1.22\n",
		"cmd/tiny/main.go": "package main\n\nvar buildID = \"none\"\n\nfunc main() { print(buildID) }\n",
	}
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// runBinary returns what bin writes to its standard error.
func runBinary(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", bin, err, out)
	}
	return string(out)
}

func gitRun(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"}, args...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

func TestBuildWorkingTree(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs the go command")
	}
	ctx := context.Background()
	src := t.TempDir()
	writeModule(t, src)
	root, err := ModuleRoot(ctx, filepath.Join(src, "cmd", "tiny"))
	if err != nil || root != src {
		t.Fatalf("ModuleRoot = %q, %v; want %q", root, err, src)
	}
	bin := filepath.Join(t.TempDir(), "tiny")
	if err := Build(ctx, src, bin, "-X main.buildID=v1", "./cmd/tiny"); err != nil {
		t.Fatal(err)
	}
	if got := runBinary(t, bin); got != "v1" {
		t.Errorf("the binary says %q, want v1", got)
	}
	if err := Build(ctx, src, bin, "", "./cmd/none"); err == nil {
		t.Error("a package that does not exist built")
	}
}

func TestModuleRootOutsideAModule(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs the go command")
	}
	t.Setenv("GO111MODULE", "on")
	t.Setenv("GOFLAGS", "")
	if _, err := ModuleRoot(context.Background(), t.TempDir()); !errors.Is(err, ErrNoModule) {
		t.Errorf("got %v, want ErrNoModule", err)
	}
}

func TestBuildCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs git and the go command")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	ctx := context.Background()
	repo := t.TempDir()
	writeModule(t, repo)
	gitRun(t, repo, "init", "-q")
	gitRun(t, repo, "add", ".")
	gitRun(t, repo, "commit", "-q", "-m", "tiny")
	head, err := Git(ctx, repo, "rev-parse", "HEAD")
	if err != nil {
		t.Fatal(err)
	}

	// A build in the working tree records the commit.
	bin := filepath.Join(t.TempDir(), "tiny")
	if err := Build(ctx, repo, bin, "", "./cmd/tiny"); err != nil {
		t.Fatal(err)
	}
	if rev, modified, err := Revision(bin); err != nil || rev != head || modified {
		t.Errorf("Revision = %q, %v, %v; want %q, false", rev, modified, err, head)
	}

	// A later change in the working tree does not reach the commit's build.
	if err := os.WriteFile(filepath.Join(repo, "cmd", "tiny", "main.go"), []byte("package main\n\nfunc main() { print(\"changed\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "src")
	commit, err := Extract(ctx, repo, "HEAD", src)
	if err != nil || commit != head {
		t.Fatalf("Extract = %q, %v; want %q", commit, err, head)
	}
	if err := Build(ctx, src, bin, "-X main.buildID=v2", "./cmd/tiny"); err != nil {
		t.Fatal(err)
	}
	if got := runBinary(t, bin); got != "v2" {
		t.Errorf("the binary says %q, want v2", got)
	}
	if rev, _, err := Revision(bin); err != nil || rev != "unknown" {
		t.Errorf("Revision of an archive's build = %q, %v; want unknown", rev, err)
	}

	if _, err := Extract(ctx, repo, "no-such-rev", t.TempDir()); err == nil {
		t.Error("a revision that does not exist extracted")
	}
}

func TestExtractThisRepository(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: extracts the whole repository")
	}
	ctx := context.Background()
	root, err := ModuleRoot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Git(ctx, root, "rev-parse", "HEAD"); err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	dir := t.TempDir()
	commit, err := Extract(ctx, root, "HEAD", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(commit) {
		t.Errorf("commit %q", commit)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Error(err)
	}
}
