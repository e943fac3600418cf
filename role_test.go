package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdutil"
	"github.com/handoff-go/handoff/internal/wire"
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
	case "listeners", "successor", "badsock":
		run := map[string]func() error{"listeners": childListeners, "successor": childSuccessor, "badsock": childBadSock}
		if err := run[os.Getenv("TC_MODE")](); err != nil {
			report("error: " + err.Error())
			return 1
		}
		report("ok")
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

// runtimeFD reports whether a descriptor with this readlink target is one
// the Go runtime opens for itself: the netpoller's epoll and eventfd,
// pidfds of child processes, and the cgroup CPU-limit files it keeps open
// to size GOMAXPROCS.
func runtimeFD(target string) bool {
	switch target {
	case "anon_inode:[eventpoll]", "anon_inode:[eventfd]", "anon_inode:[pidfd]":
		return true
	}
	if strings.HasPrefix(target, "/sys/fs/cgroup/") {
		switch filepath.Base(target) {
		case "cpu.max", "cpu.cfs_quota_us", "cpu.cfs_period_us":
			return true
		}
	}
	return false
}

// envAmbientFDs names, for a test child, the descriptors its test-binary
// parent itself inherited without close-on-exec (from go test or a CI
// runner): every exec passes those on, whoever spawns.
const envAmbientFDs = "TC_AMBIENT_FDS"

// ambientFDs lists this process's descriptors from 3 up that lack
// close-on-exec, comma-separated.
func ambientFDs() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < firstListenFD {
			continue
		}
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			out = append(out, e.Name())
		}
	}
	return strings.Join(out, ",")
}

// checkFDSet fails unless this process's descriptors from 3 up are exactly
// want plus the runtime's own and the ambient ones.
func checkFDSet(want ...int) error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	missing := map[int]bool{}
	for _, fd := range want {
		missing[fd] = true
	}
	ambient := map[string]bool{}
	for _, s := range strings.Split(os.Getenv(envAmbientFDs), ",") {
		ambient[s] = true
	}
	var extra []string
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < firstListenFD {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if errors.Is(err, os.ErrNotExist) {
			continue // closed since the listing: the listed directory itself
		}
		switch {
		case missing[fd]:
			delete(missing, fd)
		case ambient[e.Name()] && !slices.Contains(want, fd), runtimeFD(target):
		default:
			extra = append(extra, e.Name()+"->"+target)
		}
	}
	if len(missing) > 0 || len(extra) > 0 {
		return fmt.Errorf("descriptors: want %v, missing %v, unexpected %v (all: %s)", want, missing, extra, listFDs())
	}
	return nil
}

func checkCloseOnExec(fds ...int) error {
	for _, fd := range fds {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			return fmt.Errorf("fd %d not close-on-exec (flags %d, %v)", fd, flags, err)
		}
	}
	return nil
}

func checkEnvCleared() error {
	for _, k := range []string{EnvListenFDs, EnvListenFDNames, EnvListenPID, EnvRole, EnvSockFD} {
		if v, set := os.LookupEnv(k); set {
			return fmt.Errorf("%s=%q still set after DetectRole", k, v)
		}
	}
	return nil
}

// childListeners is a cold-started daemon given five named descriptors.
func childListeners() error {
	if err := checkFDSet(3, 4, 5, 6, 7); err != nil {
		return fmt.Errorf("at start: %w", err)
	}
	role, err := DetectRole()
	if err != nil {
		return err
	}
	cs, ok := role.(*ColdStart)
	if !ok {
		return fmt.Errorf("role %T, want *ColdStart", role)
	}
	if err := checkEnvCleared(); err != nil {
		return err
	}
	if err := checkCloseOnExec(3, 4, 5, 6, 7); err != nil {
		return err
	}
	il := cs.Inherited
	if got := strings.Join(il.Names(), ","); got != "tcp,unix,udp,ugram,file" {
		return fmt.Errorf("names %q", got)
	}
	if _, err := il.Listener("nope"); !errors.Is(err, ErrNotInherited) {
		return fmt.Errorf("Listener(nope): %v, want ErrNotInherited", err)
	}
	if _, err := il.Listener("udp"); err == nil {
		return errors.New("Listener on a UDP socket succeeded")
	}
	if _, err := il.PacketConn("tcp"); err == nil {
		return errors.New("PacketConn on a TCP listener succeeded")
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
	for _, name := range []string{"udp", "ugram"} {
		pc, err := il.PacketConn(name)
		if err != nil {
			return err
		}
		buf := make([]byte, 64)
		pc.SetDeadline(time.Now().Add(10 * time.Second))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if name == "ugram" {
			// The unixgram sender is unbound and cannot be answered: the
			// datagram is checked here instead.
			if got, want := string(buf[:n]), "ugram-ping"; got != want {
				return fmt.Errorf("%s: got %q, want %q", name, got, want)
			}
		} else if _, err := pc.WriteTo(fmt.Appendf(nil, "%s:%d:%s", name, os.Getpid(), buf[:n]), from); err != nil {
			return err
		}
		pc.Close()
	}
	f, err := il.File("file")
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "file:%d\n", os.Getpid())
	f.Close()
	il.Close()
	// Everything inherited is closed now.
	if err := checkFDSet(); err != nil {
		return fmt.Errorf("at the end: %w", err)
	}
	return nil
}

// childSuccessor is a successor given one listener and the control
// socketpair end after it.
func childSuccessor() error {
	if err := checkFDSet(3, 4); err != nil {
		return fmt.Errorf("at start: %w", err)
	}
	if got := os.Getenv(EnvSockFD); got != "4" {
		return fmt.Errorf("%s=%q, want 4", EnvSockFD, got)
	}
	role, err := DetectRole()
	if err != nil {
		return err
	}
	s, ok := role.(*Successor)
	if !ok {
		return fmt.Errorf("role %T, want *Successor", role)
	}
	if err := checkEnvCleared(); err != nil {
		return err
	}
	if got := strings.Join(s.inherited.Names(), ","); got != "tcp" {
		return fmt.Errorf("names %q", got)
	}
	var connFD int
	if err := fdutil.Control(s.conn.UnixConn(), func(fd int) error { connFD = fd; return nil }); err != nil {
		return err
	}
	// The control socket may have moved to another descriptor; whichever
	// it is, it and the listener are the only ones, and a grandchild
	// inherits neither.
	if err := checkFDSet(3, connFD); err != nil {
		return fmt.Errorf("after DetectRole: %w", err)
	}
	if err := checkCloseOnExec(3, connFD); err != nil {
		return err
	}
	if err := s.conn.Send(wire.Hello{Role: wire.RoleSuccessor, PID: os.Getpid(), BuildID: "successor-test", MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion}, "", 5*time.Second); err != nil {
		return err
	}
	f, err := s.conn.Recv(10 * time.Second)
	if err != nil {
		return err
	}
	if f.Msg != (wire.Commit{}) || f.ID != "h-successor" {
		return fmt.Errorf("got %#v for %q, want commit for h-successor", f.Msg, f.ID)
	}
	s.conn.Close()
	s.inherited.Close()
	if err := checkFDSet(); err != nil {
		return fmt.Errorf("at the end: %w", err)
	}
	return nil
}

// childBadSock is given HANDOFF_SOCK_FD=3, the descriptor of its only listener.
func childBadSock() error {
	_, err := DetectRole()
	if err == nil || !strings.Contains(err.Error(), "inherited listeners") {
		return fmt.Errorf("DetectRole: %v, want an error saying fd 3 is a listener", err)
	}
	if err := checkEnvCleared(); err != nil {
		return err
	}
	// The listener set was closed on the error path.
	return checkFDSet()
}

// listFDs lists this process's descriptors and their targets.
func listFDs() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		dest, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+"->"+dest)
	}
	return strings.Join(out, " ")
}

// readChildReport waits for c to exit and fails unless it reported "ok".
func readChildReport(t *testing.T, c *child, out string) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Fatal("child did not exit")
	}
	if res, _ := os.ReadFile(out); string(res) != "ok" {
		t.Fatalf("child: %s", res)
	}
	if !c.state.Success() {
		t.Errorf("child exit: %v", c.state)
	}
}

func TestSpawnPassesNamedListeners(t *testing.T) {
	checkLeaks(t)
	dir := shortDir(t)
	tcp := listenTCP(t)
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
	ugram, err := net.ListenPacket("unixgram", filepath.Join(dir, "g.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ugram.Close()
	file, err := os.Create(filepath.Join(dir, "plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()

	// Every descriptor counts, not only sockets: the root package's tests
	// do not run in parallel, so nothing else opens or closes any meanwhile.
	fdsBefore := countFDs(t)
	sup, err := NewSupervisor(SupervisorConfig{ControlSocket: filepath.Join(dir, "ctl")})
	if err != nil {
		t.Fatal(err)
	}
	must(t, sup.AddListener("tcp", tcp))
	must(t, sup.AddListener("unix", ux))
	must(t, sup.AddPacketConn("udp", udp))
	must(t, sup.AddPacketConn("ugram", ugram))
	must(t, sup.AddFile("file", file))
	if err := sup.AddListener("tcp", tcp); err == nil {
		t.Fatal("adding a name twice succeeded")
	}
	out := filepath.Join(dir, "out")
	names, fds := sup.listenerFDs()
	c, err := sup.spawn(SpawnSpec{Binary: os.Args[0], Args: []string{"-test.run=^$"}, Env: []string{"HANDOFF_TEST_ROLE=child", "TC_MODE=listeners", "TC_OUT=" + out, envAmbientFDs + "=" + ambientFDs()}}, names, fds, -1)
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
	gc, err := net.Dial("unixgram", ugram.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gc.Write([]byte("ugram-ping")); err != nil {
		t.Fatal(err)
	}
	gc.Close()
	readChildReport(t, c, out)
	if b, _ := os.ReadFile(file.Name()); string(b) != "file:"+want+"\n" {
		t.Errorf("file content %q", b)
	}

	// The parent's sockets are all still non-blocking, and the listener
	// still accepts.
	for _, sc := range []syscall.Conn{tcp.(*net.TCPListener), ux.(*net.UnixListener), udp.(*net.UDPConn), ugram.(*net.UnixConn)} {
		assertNonblocking(t, sc)
	}
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
	expectFDs(t, fdsBefore)
}

func TestSpawnSuccessorGetsControlSocket(t *testing.T) {
	checkLeaks(t)
	dir := shortDir(t)
	tcp := listenTCP(t)
	// The daemon's output goes to a non-blocking pipe that must stay so.
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	defer outW.Close()
	fdsBefore := countFDs(t)
	sup, err := NewSupervisor(SupervisorConfig{ControlSocket: filepath.Join(dir, "ctl"), Stdout: outW, Stderr: outW})
	if err != nil {
		t.Fatal(err)
	}
	must(t, sup.AddListener("tcp", tcp))
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	pf := os.NewFile(uintptr(pair[0]), "control")
	nc, err := net.FileConn(pf)
	pf.Close()
	if err != nil {
		unix.Close(pair[1])
		t.Fatal(err)
	}
	conn := wire.NewConn(nc.(*net.UnixConn))
	defer conn.Close()

	out := filepath.Join(dir, "out")
	names, fds := sup.listenerFDs()
	c, err := sup.spawn(SpawnSpec{Binary: os.Args[0], Args: []string{"-test.run=^$"}, Env: []string{"HANDOFF_TEST_ROLE=child", "TC_MODE=successor", "TC_OUT=" + out, envAmbientFDs + "=" + ambientFDs()}}, names, fds, pair[1])
	unix.Close(pair[1])
	if err != nil {
		t.Fatal(err)
	}
	c.watch(func(*child) {})
	f, err := conn.Recv(20 * time.Second)
	if err != nil {
		t.Fatalf("hello from the successor: %v (child: %s)", err, func() []byte { b, _ := os.ReadFile(out); return b }())
	}
	if h, ok := f.Msg.(wire.Hello); !ok || h.PID != c.pid || h.Role != wire.RoleSuccessor {
		t.Fatalf("got %#v, want a successor's hello from pid %d", f.Msg, c.pid)
	}
	must(t, conn.Send(wire.Commit{}, "h-successor", 5*time.Second))
	readChildReport(t, c, out)
	assertNonblocking(t, tcp.(*net.TCPListener))
	assertNonblocking(t, outW)
	conn.Close()
	sup.Close()
	expectFDs(t, fdsBefore)
}

func TestDetectRoleRejectsSocketAmongListeners(t *testing.T) {
	checkLeaks(t)
	dir := shortDir(t)
	tcp := listenTCP(t)
	fd, err := fdutil.Dup(tcp.(*net.TCPListener))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	out := filepath.Join(dir, "out")
	env := append(spawnEnv("HANDOFF_TEST_ROLE=child", "TC_MODE=badsock", "TC_OUT="+out, envAmbientFDs+"="+ambientFDs()),
		EnvListenFDs+"=1", EnvListenFDNames+"=tcp", EnvRole+"="+RoleSuccessorValue, EnvSockFD+"=3")
	p, err := fdutil.Spawn(fdutil.SpawnAttr{Path: os.Args[0], Argv: []string{os.Args[0], "-test.run=^$"}, Env: env, Stdio: [3]int{-1, 1, 2}, Extra: []int{fd}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if res, _ := os.ReadFile(out); string(res) != "ok" || !st.Success() {
		t.Fatalf("child: %s (%v)", res, st)
	}
}

func assertNonblocking(t *testing.T, c syscall.Conn) {
	t.Helper()
	err := fdutil.Control(c, func(fd int) error {
		nb, err := fdutil.IsNonblock(fd)
		if err == nil && !nb {
			err = fmt.Errorf("O_NONBLOCK was cleared on %T", c)
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
		{"socket on a standard stream", map[string]string{EnvRole: RoleSuccessorValue, EnvSockFD: "1"}, EnvSockFD},
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
			if err := checkEnvCleared(); err != nil {
				t.Fatalf("after a failed DetectRole: %v", err)
			}
		})
	}
}

// lockFileWatch holds a read-only descriptor on a data directory's lock
// file. Inode numbers alone prove nothing (ext4 hands a freed one to the
// next new file); an open descriptor on the original inode does: its link
// count drops to 0 if the file is unlinked, and path must still name it.
type lockFileWatch struct {
	path string
	f    *os.File
}

func watchLockFile(t *testing.T, dir string) *lockFileWatch {
	t.Helper()
	path := filepath.Join(dir, LockFileName)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &lockFileWatch{path: path, f: f}
}

// check fails unless the watched inode is still the lock file, linked once.
func (w *lockFileWatch) check(t *testing.T, step string) {
	t.Helper()
	var fst, pst unix.Stat_t
	if err := fdutil.Control(w.f, func(fd int) error { return unix.Fstat(fd, &fst) }); err != nil {
		t.Fatalf("%s: fstat lock file: %v", step, err)
	}
	if fst.Nlink != 1 {
		t.Fatalf("%s: the lock file has %d links, want 1 (it was unlinked or linked elsewhere)", step, fst.Nlink)
	}
	if err := unix.Stat(w.path, &pst); err != nil {
		t.Fatalf("%s: %v", step, err)
	}
	if pst.Ino != fst.Ino || pst.Dev != fst.Dev {
		t.Fatalf("%s: %s is inode %d, the lock file was %d: it was replaced", step, w.path, pst.Ino, fst.Ino)
	}
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
	lf := watchLockFile(t, dir)
	if _, err := AcquireDataDirLock(dir); !errors.Is(err, ErrLockHeld) {
		t.Fatalf("second acquire in-process: %v, want ErrLockHeld", err)
	}
	lf.check(t, "second acquire")
	must(t, l.Release())
	must(t, l.Release()) // idempotent
	lf.check(t, "release")

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
		lf.check(t, "acquire while a child holds it")
		// It refuses at once: no retry (which would end in ErrTimeout).
		retries := 0
		breakStaleRetry = func() { retries++ }
		_, err = AcquireDataDirLockOrBreakStale(dir)
		breakStaleRetry = nil
		if !errors.As(err, &held) || held.StaleHolder || held.HolderPID != cmd.Process.Pid || errors.Is(err, ErrTimeout) || retries != 0 {
			t.Fatalf("break-stale on a live holder: %v (%+v, %d retries), want a refusal at once naming pid %d", err, held, retries, cmd.Process.Pid)
		}
		lf.check(t, "break-stale on a live holder")
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
		lf.check(t, "break-stale after SIGKILL")
		must(t, l.Release())
		lf.check(t, "release")
	})

	t.Run("descriptor inherited by a grandchild keeps it held", func(t *testing.T) {
		cmd, msg := startLockChild(t, dir, true)
		gpid, _ := strconv.Atoi(strings.TrimPrefix(msg, "locked "))
		t.Cleanup(func() { syscall.Kill(gpid, syscall.SIGKILL) })
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		_, err := AcquireDataDirLockOrBreakStale(dir)
		var held *LockHeldError
		if !errors.As(err, &held) || !held.StaleHolder || held.HolderPID != cmd.Process.Pid || !errors.Is(err, ErrTimeout) {
			t.Fatalf("break-stale with a grandchild holding the descriptor: %v (%+v)", err, held)
		}
		lf.check(t, "break-stale with a grandchild holding the descriptor")

		// A live process is recorded as the holder while break-stale
		// waits: it must name that process, not call it dead, and stop
		// waiting (a wait to the end would match ErrTimeout). The pid
		// file is written on the first retry, so it is read again.
		retries := 0
		breakStaleRetry = func() {
			if retries++; retries == 1 {
				writePIDFile(dir, gpid)
			}
		}
		_, err = AcquireDataDirLockOrBreakStale(dir)
		breakStaleRetry = nil
		if !errors.As(err, &held) || held.StaleHolder || held.HolderPID != gpid || errors.Is(err, ErrTimeout) || retries != 1 {
			t.Fatalf("break-stale after a live holder was recorded: %v (%+v, %d retries), want pid %d not stale after one retry", err, held, retries, gpid)
		}
		lf.check(t, "break-stale with a live recorded holder")

		syscall.Kill(gpid, syscall.SIGKILL)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := AcquireDataDirLockWait(ctx, dir)
		if err != nil {
			t.Fatalf("acquire after the grandchild died: %v", err)
		}
		lf.check(t, "acquire after the grandchild died")
		must(t, l.Release())
		lf.check(t, "release")
	})
	lf.check(t, "end")
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

// listenTCP returns a loopback TCP listener closed when the test ends.
func listenTCP(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// expectFDs fails the test unless the process has as many descriptors
// open as before.
func expectFDs(t *testing.T, before int) {
	t.Helper()
	if got := countFDs(t); got != before {
		t.Errorf("parent fds: %d before, %d after: %s", before, got, listFDs())
	}
}
