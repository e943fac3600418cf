package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdutil"
)

// testChild is the child side of the role and lock tests (HANDOFF_TEST_ROLE=child).
func testChild() int {
	out := os.Getenv("TC_OUT")
	report := func(s string) {
		if err := writeFileAtomic(out, []byte(s), 0o644); err != nil {
			dlog("report: %v", err)
		}
	}
	switch os.Getenv("TC_MODE") {
	case "listeners":
		if err := childListeners(report); err != nil {
			report("error: " + err.Error())
			return 1
		}
		return 0
	case "lock":
		l, err := AcquireDataDirLock(os.Getenv("TC_DIR"))
		if err != nil {
			report("error: " + err.Error())
			return 1
		}
		if os.Getenv("TC_GRANDCHILD") != "" {
			// Leak the lock's descriptor into a grandchild on purpose.
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "TC_MODE=hold", "TC_OUT="+out+".grandchild")
			cmd.ExtraFiles = []*os.File{l.f}
			if err := cmd.Start(); err != nil {
				report("error: " + err.Error())
				return 1
			}
			report("locked " + strconv.Itoa(cmd.Process.Pid))
		} else {
			report("locked")
		}
		select {}
	case "hold":
		report("holding")
		select {}
	}
	return 9
}

func childListeners(report func(string)) error {
	fdsStart := countOwnFDs("socket:", "plain")
	role, err := DetectRole()
	if err != nil {
		return err
	}
	cs, ok := role.(*ColdStart)
	if !ok {
		return fmt.Errorf("role %T, want *ColdStart", role)
	}
	for _, k := range []string{EnvListenFDs, EnvListenFDNames, EnvRole, EnvSockFD} {
		if v, set := os.LookupEnv(k); set {
			return fmt.Errorf("%s=%q still set after DetectRole", k, v)
		}
	}
	for fd := firstListenFD; fd < firstListenFD+4; fd++ {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			return fmt.Errorf("inherited fd %d not close-on-exec (flags %d, %v)", fd, flags, err)
		}
	}
	il := cs.Inherited
	if got := strings.Join(il.Names(), ","); got != "tcp,unix,udp,file" {
		return fmt.Errorf("names %q", got)
	}
	if _, err := il.Listener("nope"); !errors.Is(err, ErrNotInherited) {
		return fmt.Errorf("Listener(nope): %v, want ErrNotInherited", err)
	}
	if _, err := il.Listener("udp"); err == nil {
		return errors.New("Listener on a UDP socket succeeded")
	}
	serve := func(name string) error {
		ln, err := il.Listener(name)
		if err != nil {
			return err
		}
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = fmt.Fprintf(c, "%s:%d\n", name, os.Getpid())
		return err
	}
	if err := serve("tcp"); err != nil {
		return err
	}
	if err := serve("unix"); err != nil {
		return err
	}
	pc, err := il.PacketConn("udp")
	if err != nil {
		return err
	}
	buf := make([]byte, 64)
	pc.SetDeadline(time.Now().Add(10 * time.Second))
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		return err
	}
	if _, err := pc.WriteTo([]byte(fmt.Sprintf("udp:%d:%s", os.Getpid(), buf[:n])), from); err != nil {
		return err
	}
	pc.Close()
	f, err := il.File("file")
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "file:%d\n", os.Getpid())
	f.Close()
	il.Close()
	// Everything inherited is closed now: no socket or file of ours is
	// left open in the child.
	report(fmt.Sprintf("ok %d %d", fdsStart, countOwnFDs("socket:", "plain")))
	return nil
}

// countOwnFDs counts this process's descriptors whose target contains
// one of the given strings.
func listFDs() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		dest, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+"->"+dest)
	}
	return strings.Join(out, " ")
}

func countOwnFDs(targets ...string) int {
	ents, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range ents {
		dest, _ := os.Readlink("/proc/self/fd/" + e.Name())
		for _, s := range targets {
			if strings.Contains(dest, s) {
				n++
				break
			}
		}
	}
	return n
}

func TestSpawnPassesNamedListeners(t *testing.T) {
	checkLeaks(t)
	dir := shortDir(t)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	ux, err := net.Listen("unix", filepath.Join(dir, "u.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ux.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	file, err := os.Create(filepath.Join(dir, "plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()

	// The sockets and the file passed: other descriptors (pidfds of other tests' daemons, /dev/null of a spawn elsewhere) may come and go.
	fdsBefore := countOwnFDs("socket:", "plain")
	sup, err := NewSupervisor(SupervisorConfig{ControlSocket: filepath.Join(dir, "ctl")})
	if err != nil {
		t.Fatal(err)
	}
	must(t, sup.AddListener("tcp", tcp))
	must(t, sup.AddListener("unix", ux))
	must(t, sup.AddPacketConn("udp", udp))
	must(t, sup.AddFile("file", file))
	if err := sup.AddListener("tcp", tcp); err == nil {
		t.Fatal("adding a name twice succeeded")
	}
	out := filepath.Join(dir, "out")
	names, fds := sup.listenerFDs()
	c, err := sup.spawn(SpawnSpec{Binary: os.Args[0], Args: []string{"-test.run=^$"}, Env: []string{"HANDOFF_TEST_ROLE=child", "TC_MODE=listeners", "TC_OUT=" + out}}, names, fds, -1)
	if err != nil {
		t.Fatal(err)
	}
	c.watch(func(*child) {})

	// Connections and datagrams queue in the kernel until the child takes them.
	reply := func(network, addr string) string {
		conn, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 64)
		if network == "udp" {
			conn.Write([]byte("ping"))
		}
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("%s reply: %v", network, err)
		}
		return strings.TrimSpace(string(buf[:n]))
	}
	want := strconv.Itoa(c.pid)
	if got := reply("tcp", tcp.Addr().String()); got != "tcp:"+want {
		t.Errorf("tcp reply %q", got)
	}
	if got := reply("unix", ux.Addr().String()); got != "unix:"+want {
		t.Errorf("unix reply %q", got)
	}
	if got := reply("udp", udp.LocalAddr().String()); got != "udp:"+want+":ping" {
		t.Errorf("udp reply %q", got)
	}
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Fatal("child did not exit")
	}
	res, _ := os.ReadFile(out)
	var start, end int
	if _, err := fmt.Sscanf(string(res), "ok %d %d", &start, &end); err != nil {
		t.Fatalf("child: %s", res)
	}
	if start != 4 || end != 0 {
		t.Errorf("child's sockets and files: %d at start (want the 4 inherited), %d at the end (want 0)", start, end)
	}
	if !c.state.Success() {
		t.Errorf("child exit: %v", c.state)
	}
	if b, _ := os.ReadFile(file.Name()); string(b) != "file:"+want+"\n" {
		t.Errorf("file content %q", b)
	}

	// The parent's listener is still non-blocking and still accepts.
	assertNonblocking(t, tcp.(*net.TCPListener))
	dialed := make(chan struct{})
	go func() {
		defer close(dialed)
		if c, err := net.Dial("tcp", tcp.Addr().String()); err == nil {
			c.Close()
		}
	}()
	tcp.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	conn, err := tcp.Accept()
	if err != nil {
		t.Fatalf("parent accept after spawn: %v", err)
	}
	conn.Close()
	<-dialed
	sup.Close()
	if got := countOwnFDs("socket:", "plain"); got != fdsBefore {
		t.Errorf("parent fds: %d before, %d after: %s", fdsBefore, got, listFDs())
	}
}

func assertNonblocking(t *testing.T, l *net.TCPListener) {
	t.Helper()
	err := fdutil.Control(l, func(fd int) error {
		nb, err := fdutil.IsNonblock(fd)
		if err == nil && !nb {
			err = errors.New("O_NONBLOCK was cleared on the listening socket")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestDetectRoleByHand(t *testing.T) {
	t.Setenv(EnvListenFDs, "")
	role, err := DetectRole()
	if err != nil {
		t.Fatal(err)
	}
	cs, ok := role.(*ColdStart)
	if !ok || cs.Inherited == nil || len(cs.Inherited.Names()) != 0 {
		t.Fatalf("role %#v", role)
	}
	if _, err := cs.Inherited.Listener("http"); !errors.Is(err, ErrNotInherited) {
		t.Fatalf("Listener: %v, want ErrNotInherited", err)
	}
	if _, err := cs.Inherited.PacketConn("dns"); !errors.Is(err, ErrNotInherited) {
		t.Fatalf("PacketConn: %v, want ErrNotInherited", err)
	}
	if _, err := cs.Inherited.File("x"); !errors.Is(err, ErrNotInherited) {
		t.Fatalf("File: %v, want ErrNotInherited", err)
	}
}

func TestDetectRoleRejectsBadEnvironment(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"bad count", map[string]string{EnvListenFDs: "x"}, EnvListenFDs},
		{"names mismatch", map[string]string{EnvListenFDs: "1", EnvListenFDNames: "a:b"}, EnvListenFDNames},
		{"unknown role", map[string]string{EnvRole: "boss"}, EnvRole},
		{"successor without socket", map[string]string{EnvRole: RoleSuccessorValue, EnvSockFD: "x"}, EnvSockFD},
		{"socket without role", map[string]string{EnvSockFD: "5"}, EnvSockFD},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{EnvListenFDs, EnvListenFDNames, EnvListenPID, EnvRole, EnvSockFD} {
				t.Setenv(k, tc.env[k])
				if tc.env[k] == "" {
					os.Unsetenv(k)
				}
			}
			_, err := DetectRole()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DetectRole: %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

func lockInode(t *testing.T, dir string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, LockFileName), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// startLockChild starts a child that takes the lock on dir and reports it
// in a marker file; it returns the child and the marker's content.
func startLockChild(t *testing.T, dir string, grandchild bool) (*exec.Cmd, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_ROLE=child", "TC_MODE=lock", "TC_DIR="+dir, "TC_OUT="+out)
	if grandchild {
		cmd.Env = append(cmd.Env, "TC_GRANDCHILD=1")
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var msg string
	waitFor(t, "the child's lock marker", func() bool {
		b, err := os.ReadFile(out)
		msg = string(b)
		return err == nil
	})
	if !strings.HasPrefix(msg, "locked") {
		t.Fatalf("child: %s", msg)
	}
	if grandchild {
		waitFor(t, "the grandchild's marker", func() bool { _, err := os.Stat(out + ".grandchild"); return err == nil })
	}
	return cmd, msg
}

func TestLockAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	l, err := AcquireDataDirLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	ino := lockInode(t, dir)
	if _, err := AcquireDataDirLock(dir); !errors.Is(err, ErrLockHeld) {
		t.Fatalf("second acquire in-process: %v, want ErrLockHeld", err)
	}
	must(t, l.Release())
	must(t, l.Release()) // idempotent

	t.Run("held by a live child names its pid", func(t *testing.T) {
		cmd, _ := startLockChild(t, dir, false)
		_, err := AcquireDataDirLock(dir)
		var held *LockHeldError
		if !errors.As(err, &held) || !errors.Is(err, ErrLockHeld) || held.HolderPID != cmd.Process.Pid {
			t.Fatalf("acquire: %v (holder %+v), want ErrLockHeld naming pid %d", err, held, cmd.Process.Pid)
		}
		if !strings.Contains(err.Error(), strconv.Itoa(cmd.Process.Pid)) {
			t.Fatalf("error %q does not name the holder", err)
		}
		if _, err := AcquireDataDirLockOrBreakStale(dir); !errors.Is(err, ErrLockHeld) {
			t.Fatalf("break-stale on a live holder: %v", err)
		}
		// SIGKILL frees it: the kernel drops the flock with the last descriptor.
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		l, err := AcquireDataDirLockOrBreakStale(dir)
		if err != nil {
			t.Fatalf("acquire after SIGKILL: %v", err)
		}
		if pid := readPID(dir); pid != os.Getpid() {
			t.Fatalf("pid file names %d, want us", pid)
		}
		must(t, l.Release())
	})

	t.Run("descriptor inherited by a grandchild keeps it held", func(t *testing.T) {
		cmd, msg := startLockChild(t, dir, true)
		gpid, _ := strconv.Atoi(strings.TrimPrefix(msg, "locked "))
		t.Cleanup(func() { syscall.Kill(gpid, syscall.SIGKILL) })
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		_, err := AcquireDataDirLockOrBreakStale(dir)
		var held *LockHeldError
		if !errors.As(err, &held) || !held.StaleHolder || held.HolderPID != cmd.Process.Pid {
			t.Fatalf("break-stale with a grandchild holding the descriptor: %v (%+v)", err, held)
		}
		syscall.Kill(gpid, syscall.SIGKILL)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := AcquireDataDirLockWait(ctx, dir)
		if err != nil {
			t.Fatalf("acquire after the grandchild died: %v", err)
		}
		must(t, l.Release())
	})

	if got := lockInode(t, dir); got != ino {
		t.Fatalf("lock file inode changed from %d to %d", ino, got)
	}
}

func TestLockRejectsEmptyDir(t *testing.T) {
	if _, err := AcquireDataDirLock(""); err == nil {
		t.Fatal("empty dir accepted")
	}
	if _, err := AcquireDataDirLock(filepath.Join(t.TempDir(), "missing")); err == nil || errors.Is(err, ErrLockHeld) {
		t.Fatalf("missing dir: %v", err)
	}
}

func TestSpawnEnvOverridesAndStrips(t *testing.T) {
	t.Setenv("HANDOFF_TEST_KEEP", "supervisor")
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv(EnvListenFDs, "2")
	env := spawnEnv("HANDOFF_TEST_KEEP=spec", EnvListenFDs+"=1")
	count := map[string]int{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		count[k]++
		if k == "HANDOFF_TEST_KEEP" && v != "spec" {
			t.Errorf("HANDOFF_TEST_KEEP=%q, want the spec's value", v)
		}
		if k == "NOTIFY_SOCKET" {
			t.Errorf("NOTIFY_SOCKET passed to the daemon")
		}
	}
	if count["HANDOFF_TEST_KEEP"] != 1 || count[EnvListenFDs] != 1 {
		t.Errorf("duplicate keys: %v", count)
	}
}
