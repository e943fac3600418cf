package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func cloexec(t *testing.T, fd int) bool {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatalf("fd %d: %v", fd, err)
	}
	return fl&unix.FD_CLOEXEC != 0
}

// TestReexecStateRoundTrip passes descriptors through the environment the
// way a re-exec does (in one process: exec keeps descriptors numbers).
func TestReexecStateRoundTrip(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	metricsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer metricsLn.Close()
	trigPath := filepath.Join(shortDir(t), "trigger")
	trig, err := listenTrigger(trigPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer trig.Close()

	lfd, err := dupInheritable(tcp.(*net.TCPListener))
	if err != nil {
		t.Fatal(err)
	}
	if cloexec(t, lfd) {
		t.Fatal("dupInheritable left close-on-exec set")
	}
	tfd, _ := dupInheritable(trig)
	mfd, _ := dupInheritable(metricsLn.(*net.TCPListener))
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pin, err := openPin(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer pin.close()
	pfd, _ := dupInheritable(pin.f)
	cfgDoc := "control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"/bin/d\"\ndeadline_secs = 70\n"
	state := reexecState{
		ChildPID: 123, KnownGood: exe, Started: time.Unix(1000, 0).UTC(),
		TriggerFD: tfd, TriggerPath: trigPath, TriggerIno: socketInode(trigPath),
		MetricsFD: mfd, MetricsAddr: "127.0.0.1:9464",
		PinFD: pfd, Backoff: 800 * time.Millisecond, ConfigPath: "/etc/h.toml", ConfigDoc: cfgDoc,
	}
	env, err := reexecEnv("web="+strconv.Itoa(lfd), state)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if k == envReexecFDs || k == envReexecState {
			t.Setenv(k, v)
		}
	}

	st, err := takeReexecState()
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if _, ok := os.LookupEnv(envReexecState); ok {
		t.Error("the re-exec environment was not cleared")
	}
	if st.ChildPID != 123 || st.KnownGood != exe || !st.Started.Equal(state.Started) || st.Backoff != 800*time.Millisecond {
		t.Errorf("state %+v", st.reexecState)
	}
	if cfg, err := st.config(); err != nil || cfg.path != "/etc/h.toml" || cfg.DeadlineSecs != 70 {
		t.Errorf("the passed configuration: %+v, %v", cfg, err)
	}
	for _, fd := range []int{lfd, tfd, mfd, pfd} {
		if !cloexec(t, fd) {
			t.Errorf("fd %d adopted without close-on-exec: a daemon would inherit it", fd)
		}
	}
	web, ok := st.listeners["web"]
	if !ok {
		t.Fatalf("listeners %v", st.listeners)
	}
	ln, err := net.FileListener(web.file)
	if err != nil {
		t.Fatal(err)
	}
	if ln.Addr().String() != tcp.Addr().String() {
		t.Errorf("web listener at %s, want %s", ln.Addr(), tcp.Addr())
	}
	ln.Close()
	if ul := st.triggerListener(trigPath); ul == nil {
		t.Error("the passed trigger socket was not reused")
	} else {
		ul.Close()
	}
	if p := st.pinned(); p == nil || p.path != exe || p.ino != pin.ino || p.replaced() {
		t.Errorf("the passed pin: %+v, want %s inode %d", p, exe, pin.ino)
	} else {
		p.close()
	}
	// Another metrics address in the new config: the old listener goes.
	if ml := st.metricsListener("127.0.0.1:9465"); ml != nil {
		t.Error("a metrics listener for another address was reused")
	}
}

func TestReexecStateAbsent(t *testing.T) {
	t.Setenv(envReexecState, "")
	os.Unsetenv(envReexecState)
	st, err := takeReexecState()
	if st != nil || err != nil {
		t.Fatalf("got %+v, %v", st, err)
	}
}

func TestReexecStateBad(t *testing.T) {
	for _, tt := range []struct{ fds, state, want string }{
		{"web=notanumber", `{"trigger_fd":-1,"metrics_fd":-1}`, "bad entry"},
		{"web=1", `{"trigger_fd":-1,"metrics_fd":-1}`, "bad entry"},
		{"web=1000", `{"trigger_fd":-1,"metrics_fd":-1}`, "fd 1000"},
		{"", `{not json`, envReexecState},
	} {
		t.Setenv(envReexecFDs, tt.fds)
		t.Setenv(envReexecState, tt.state)
		if _, err := takeReexecState(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q %q: got %v, want an error containing %q", tt.fds, tt.state, err, tt.want)
		}
	}
}
