package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/internal/atomicfile"
	"github.com/handoff-go/handoff/internal/fdutil"
	"github.com/handoff-go/handoff/internal/wire"
)

// testChild is the child side of the role and lock tests (HANDOFF_TEST_ROLE=child).
func testChild() int {
	out := os.Getenv("TC_OUT")
	report := func(s string) {
		if err := atomicfile.WriteFile(out, []byte(s), 0o644); err != nil {
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
		if _, err := handoff.AcquireDataDirLock(os.Getenv("TC_DIR")); err != nil {
			report("error: " + err.Error())
			return 1
		}
		report("locked")
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
		if err != nil || fd < wire.FirstListenFD {
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
		if err != nil || fd < wire.FirstListenFD {
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
	for _, k := range []string{wire.EnvListenFDs, wire.EnvListenFDNames, wire.EnvListenPID, wire.EnvRole, wire.EnvSockFD, wire.EnvControlSocket} {
		if v, set := os.LookupEnv(k); set {
			return fmt.Errorf("%s=%q still set after handoff.DetectRole", k, v)
		}
	}
	return nil
}

// childListeners is a cold-started daemon given five named descriptors.
func childListeners() error {
	if err := checkFDSet(3, 4, 5, 6, 7); err != nil {
		return fmt.Errorf("at start: %w", err)
	}
	role, err := handoff.DetectRole()
	if err != nil {
		return err
	}
	cs, ok := role.(*handoff.ColdStart)
	if !ok {
		return fmt.Errorf("role %T, want *handoff.ColdStart", role)
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
	if _, err := il.Listener("nope"); !errors.Is(err, handoff.ErrNotInherited) {
		return fmt.Errorf("Listener(nope): %v, want handoff.ErrNotInherited", err)
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
	if got := os.Getenv(wire.EnvSockFD); got != "4" {
		return fmt.Errorf("%s=%q, want 4", wire.EnvSockFD, got)
	}
	role, err := handoff.DetectRole()
	if err != nil {
		return err
	}
	s, ok := role.(*handoff.Successor)
	if !ok {
		return fmt.Errorf("role %T, want *handoff.Successor", role)
	}
	if err := checkEnvCleared(); err != nil {
		return err
	}
	// Besides the listener at 3, the control socket is the one descriptor
	// left, wherever it moved; a grandchild inherits neither.
	connFD := -1
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if fd > 3 && strings.HasPrefix(target, "socket:") && !runtimeFD(target) {
			connFD = fd
		}
	}
	if err := checkFDSet(3, connFD); err != nil {
		return fmt.Errorf("after DetectRole: %w", err)
	}
	if err := checkCloseOnExec(3, connFD); err != nil {
		return err
	}
	h, err := s.Handshake("successor-test")
	if err != nil {
		return err
	}
	if h.HandoffID() != "h-successor" {
		return fmt.Errorf("handoff id %q, want h-successor", h.HandoffID())
	}
	b, err := h.WaitForBegin(context.Background())
	if err != nil {
		return err
	}
	if got := strings.Join(b.Listeners().Names(), ","); got != "tcp" {
		return fmt.Errorf("names %q", got)
	}
	b.Listeners().Close()
	// Without a lock AnnounceAndBind refuses, and closes the session.
	if _, err := b.AnnounceAndBind(handoff.ReadinessSnapshot{}, "", nil); err == nil {
		return errors.New("AnnounceAndBind without a lock succeeded")
	}
	if err := checkFDSet(); err != nil {
		return fmt.Errorf("at the end: %w", err)
	}
	return nil
}

// childBadSock is given HANDOFF_SOCK_FD=3, the descriptor of its only listener.
func childBadSock() error {
	_, err := handoff.DetectRole()
	if err == nil || !strings.Contains(err.Error(), "inherited listeners") {
		return fmt.Errorf("handoff.DetectRole: %v, want an error saying fd 3 is a listener", err)
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
	sup, err := New(Config{ControlSocket: filepath.Join(dir, "ctl")})
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
	sup, err := New(Config{ControlSocket: filepath.Join(dir, "ctl"), Stdout: outW, Stderr: outW})
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
	must(t, conn.Send(wire.HelloAck{Version: wire.MaxVersion, DeadlineMS: 20000, LivenessMS: 10000}, "h-successor", 5*time.Second))
	conn.SetVersion(wire.MaxVersion)
	must(t, conn.Send(wire.Begin{}, "h-successor", 5*time.Second))
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
		wire.EnvListenFDs+"=1", wire.EnvListenFDNames+"=tcp", wire.EnvRole+"="+wire.RoleSuccessorEnv, wire.EnvSockFD+"=3")
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
	t.Setenv(wire.EnvListenFDs, "")
	role, err := handoff.DetectRole()
	if err != nil {
		t.Fatal(err)
	}
	cs, ok := role.(*handoff.ColdStart)
	if !ok || cs.Inherited == nil || len(cs.Inherited.Names()) != 0 {
		t.Fatalf("role %#v", role)
	}
	if _, err := cs.Inherited.Listener("http"); !errors.Is(err, handoff.ErrNotInherited) {
		t.Fatalf("Listener: %v, want handoff.ErrNotInherited", err)
	}
	if _, err := cs.Inherited.PacketConn("dns"); !errors.Is(err, handoff.ErrNotInherited) {
		t.Fatalf("PacketConn: %v, want handoff.ErrNotInherited", err)
	}
	if _, err := cs.Inherited.File("x"); !errors.Is(err, handoff.ErrNotInherited) {
		t.Fatalf("File: %v, want handoff.ErrNotInherited", err)
	}
}

func TestDetectRoleRejectsBadEnvironment(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"bad count", map[string]string{wire.EnvListenFDs: "x"}, wire.EnvListenFDs},
		{"names mismatch", map[string]string{wire.EnvListenFDs: "1", wire.EnvListenFDNames: "a:b"}, wire.EnvListenFDNames},
		{"unknown role", map[string]string{wire.EnvRole: "boss"}, wire.EnvRole},
		{"successor without socket", map[string]string{wire.EnvRole: wire.RoleSuccessorEnv, wire.EnvSockFD: "x"}, wire.EnvSockFD},
		{"socket without role", map[string]string{wire.EnvSockFD: "5"}, wire.EnvSockFD},
		{"socket on a standard stream", map[string]string{wire.EnvRole: wire.RoleSuccessorEnv, wire.EnvSockFD: "1"}, wire.EnvSockFD},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{wire.EnvListenFDs, wire.EnvListenFDNames, wire.EnvListenPID, wire.EnvRole, wire.EnvSockFD} {
				t.Setenv(k, tc.env[k])
				if tc.env[k] == "" {
					os.Unsetenv(k)
				}
			}
			_, err := handoff.DetectRole()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("handoff.DetectRole: %v, want an error naming %s", err, tc.want)
			}
			if err := checkEnvCleared(); err != nil {
				t.Fatalf("after a failed handoff.DetectRole: %v", err)
			}
		})
	}
}

func TestSpawnEnvOverridesAndStrips(t *testing.T) {
	t.Setenv("HANDOFF_TEST_KEEP", "supervisor")
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv(wire.EnvListenFDs, "2")
	env := spawnEnv("HANDOFF_TEST_KEEP=spec", wire.EnvListenFDs+"=1")
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
	if count["HANDOFF_TEST_KEEP"] != 1 || count[wire.EnvListenFDs] != 1 {
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
