// Package fdutil duplicates and passes file descriptors without ever calling
// (*os.File).Fd on a socket that is in use: Fd switches the shared open file
// description to blocking mode in every process that holds it.
package fdutil

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Dup returns a close-on-exec duplicate of the descriptor behind c, taken
// through SyscallConn so the descriptor's flags are left as they are.
func Dup(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("handoff: syscall conn: %w", err)
	}
	nfd := -1
	var dupErr error
	if err := rc.Control(func(fd uintptr) {
		nfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, fmt.Errorf("handoff: control: %w", err)
	}
	if dupErr != nil {
		return -1, fmt.Errorf("handoff: dup: %w", dupErr)
	}
	return nfd, nil
}

// Control runs fn with the raw descriptor of c.
func Control(c syscall.Conn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("handoff: syscall conn: %w", err)
	}
	var fnErr error
	if err := rc.Control(func(fd uintptr) { fnErr = fn(int(fd)) }); err != nil {
		return fmt.Errorf("handoff: control: %w", err)
	}
	return fnErr
}

// IsNonblock reports whether O_NONBLOCK is set on fd's open file description.
func IsNonblock(fd int) (bool, error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return false, err
	}
	return fl&unix.O_NONBLOCK != 0, nil
}

// SpawnAttr describes a child started by Spawn.
type SpawnAttr struct {
	Path  string   // executable
	Argv  []string // including argv[0]
	Env   []string // the whole environment, "K=V" entries
	Dir   string   // working directory; "" means the caller's
	Stdio [3]int   // descriptors for 0, 1, 2; -1 means /dev/null
	Extra []int    // placed at 3, 4, ... in the child, close-on-exec cleared there
	// Setpgid puts the child in its own process group, so a terminal's
	// Ctrl-C reaches only the supervisor, which stops the daemon in order.
	Setpgid bool
}

// Spawn starts a child with raw descriptors (syscall.StartProcess): no
// *os.File is made for them, so nothing clears O_NONBLOCK on a listener
// that the serving incumbent shares.
func Spawn(a SpawnAttr) (*os.Process, error) {
	files := make([]uintptr, 0, 3+len(a.Extra))
	var devnull *os.File
	for _, fd := range a.Stdio {
		if fd < 0 {
			if devnull == nil {
				f, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
				if err != nil {
					return nil, fmt.Errorf("handoff: open %s: %w", os.DevNull, err)
				}
				devnull = f
				defer devnull.Close()
			}
			fd = int(devnull.Fd())
		}
		files = append(files, uintptr(fd))
	}
	for _, fd := range a.Extra {
		files = append(files, uintptr(fd))
	}
	pid, _, err := syscall.StartProcess(a.Path, a.Argv, &syscall.ProcAttr{
		Dir:   a.Dir,
		Env:   a.Env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Setpgid: a.Setpgid},
	})
	if err != nil {
		return nil, fmt.Errorf("handoff: start %s: %w", a.Path, err)
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil, fmt.Errorf("handoff: find process %d: %w", pid, err)
	}
	return p, nil
}

// Room returns how many more descriptors this process can open under its
// soft RLIMIT_NOFILE, keeping margin free for its own work (sockets,
// files, the next accept). It is never negative.
func Room(margin int) int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	free := int64(rl.Cur) - int64(len(ents)) - int64(margin)
	return int(max(min(free, 1<<30), 0))
}

// OpenCount returns how many descriptors process pid has open (0 for
// "self" is not special: pass os.Getpid()).
func OpenCount(pid int) (int, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	return len(names), err
}

// GrowTable makes room in this process's descriptor table for n more
// descriptors, so that receiving them later does not grow it. The kernel
// grows a table shared by several threads (every Go process) by doubling
// it and waiting for an RCU grace period each time, milliseconds apiece;
// receiving ten thousand passed connections would wait for several. It
// never goes past the soft RLIMIT_NOFILE.
func GrowTable(n int) error {
	if n <= 0 {
		return nil
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	open, err := OpenCount(os.Getpid())
	if err != nil {
		return err
	}
	target := int(min(int64(open)+int64(n), int64(rl.Cur)-1, 1<<30))
	if target < 3 {
		return nil
	}
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if target <= fd {
		return nil
	}
	// The table holds descriptor target only once it is grown: place a
	// duplicate there, if the slot is free, and close it at once.
	if _, err := unix.FcntlInt(uintptr(target), unix.F_GETFD, 0); err == nil {
		return nil // in use: the table is that large already
	}
	if err := unix.Dup3(fd, target, unix.O_CLOEXEC); err != nil {
		return err
	}
	return unix.Close(target)
}
