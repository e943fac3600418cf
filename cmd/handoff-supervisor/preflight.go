package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// preflight checks, before anything starts, what the configuration names
// on disk: the binary, and that every socket and the journal can be
// created or replaced where it says without destroying anything else.
// The run command calls it, and a re-exec checks the new configuration
// with it. It reports every problem, each naming its key.
func (c *Config) preflight() error {
	errs := []error{c.checkBinary()}
	errs = append(errs, c.checkSocketFile("control_socket", c.ControlSocket, "the daemon would replace it with its control socket"))
	errs = append(errs, c.checkSocketFile("trigger_socket", c.TriggerSocket, "the supervisor would replace it with its trigger socket"))
	for i, a := range c.listenAddrs {
		if a.Network == "unix" || a.Network == "unixgram" {
			errs = append(errs, c.checkSocketFile(fmt.Sprintf("listeners.%d.addr", i), a.Address, "the supervisor would bind its listener there"))
		}
	}
	errs = append(errs, c.checkJournal())
	return errors.Join(errs...)
}

// fileError is a ConfigError for key about the file it names.
func (c *Config) fileError(key string, err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if err != nil {
		msg += ": " + err.Error()
	}
	return &ConfigError{File: c.path, Line: c.lines.line(key), Key: displayKey(key), Msg: msg, Err: err}
}

// checkSocketFile checks that a unix socket can be created at path, the
// value of key: its directory exists, and path is either free or a
// socket (a stale one is replaced, a live one refused when binding).
// Anything else there (a regular file, a directory, a link) is refused,
// never replaced; why says what would happen to it otherwise.
func (c *Config) checkSocketFile(key, path, why string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Lstat(path)
	switch {
	case err == nil && fi.Mode().Type() == fs.ModeSocket:
		return nil
	case err == nil:
		return c.fileError(key, nil, "%s exists and is %s, not a socket; %s: refusing to start (remove it or choose another path)", path, fileKind(fi.Mode()), why)
	case errors.Is(err, syscall.ENOTDIR):
		return c.fileError(key, err, "a parent of %s is not a directory", path)
	case !errors.Is(err, fs.ErrNotExist):
		return c.fileError(key, err, "cannot check %s", path)
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return c.fileError(key, nil, "the directory %s does not exist (create it, e.g. with RuntimeDirectory= in the unit)", dir)
	case err != nil:
		return c.fileError(key, err, "cannot check the directory %s", dir)
	case !di.IsDir():
		return c.fileError(key, nil, "%s is not a directory", dir)
	}
	return nil
}

// journalProbeSize is what the journal check writes: more than a journal
// record usually takes.
const journalProbeSize = 4096

// checkJournal checks that the journal can be read and replaced: the
// supervisor rewrites it through a temporary file beside it (write,
// fsync, rename, fsync the directory), so the check does the same with a
// probe file of its own, which it then removes. The journal itself is
// only opened for reading: nothing of it is lost.
func (c *Config) checkJournal() error {
	p := c.Journal
	if p == "" {
		return nil
	}
	fi, err := os.Lstat(p)
	switch {
	case err == nil && !fi.Mode().IsRegular():
		return c.fileError("journal", nil, "%s exists and is %s, not a regular file", p, fileKind(fi.Mode()))
	case err == nil:
		f, err := os.Open(p)
		if err != nil {
			return c.fileError("journal", err, "cannot read the journal %s", p)
		}
		f.Close()
	case errors.Is(err, syscall.ENOTDIR):
		return c.fileError("journal", err, "a parent of %s is not a directory", p)
	case !errors.Is(err, fs.ErrNotExist):
		return c.fileError("journal", err, "cannot check the journal %s", p)
	}
	dir := filepath.Dir(p)
	unwritable := func(step string, err error) error {
		return c.fileError("journal", err, "the journal %s cannot be written: the supervisor replaces it through a temporary file in %s, and %s failed", p, dir, step)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(p)+".probe-*")
	if err != nil {
		return unwritable("creating one", err)
	}
	probe := f.Name()
	renamed := probe + ".renamed"
	defer os.Remove(probe)
	_, err = f.Write(make([]byte, journalProbeSize))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return unwritable("writing one", err)
	}
	if err := os.Rename(probe, renamed); err != nil {
		return unwritable("renaming one", err)
	}
	defer os.Remove(renamed)
	d, err := os.Open(dir)
	if err == nil {
		err = d.Sync()
		d.Close()
	}
	if err != nil {
		return unwritable("syncing the directory", err)
	}
	if err := os.Remove(renamed); err != nil {
		return unwritable("removing one", err)
	}
	return nil
}

// fileKind names the kind of file mode describes, for errors.
func fileKind(mode fs.FileMode) string {
	switch mode.Type() {
	case 0:
		return "a regular file"
	case fs.ModeDir:
		return "a directory"
	case fs.ModeSymlink:
		return "a symbolic link"
	case fs.ModeNamedPipe:
		return "a named pipe"
	case fs.ModeSocket:
		return "a socket"
	case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		return "a device"
	}
	return "a special file"
}
