package main

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestBindListenerKinds(t *testing.T) {
	dir := shortDir(t)
	tests := []listenAddr{
		{"tcp", "127.0.0.1:0"},
		{"udp", "127.0.0.1:0"},
		{"unix", filepath.Join(dir, "s.sock")},
		{"unixgram", filepath.Join(dir, "g.sock")},
	}
	for _, a := range tests {
		t.Run(a.Network, func(t *testing.T) {
			o, err := bindListener("x", a)
			if err != nil {
				t.Fatal(err)
			}
			if (o.ln != nil) != a.stream() || (o.pc != nil) == a.stream() {
				t.Fatalf("%s: ln %v pc %v", a, o.ln, o.pc)
			}
			if err := o.close(); err != nil {
				t.Fatal(err)
			}
			if a.Network == "unix" || a.Network == "unixgram" {
				// Closing never unlinks: the path is shared with the daemons.
				if _, err := os.Lstat(a.Address); err != nil {
					t.Fatalf("socket file gone after close: %v", err)
				}
				// And binding again finds it stale and replaces it.
				o, err := bindListener("x", a)
				if err != nil {
					t.Fatalf("rebind over a stale socket: %v", err)
				}
				o.close()
			}
		})
	}
}

func TestBindListenerRefusesLiveOrForeignPath(t *testing.T) {
	dir := shortDir(t)
	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := bindListener("x", listenAddr{"unix", live}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("bind over a live socket: %v", err)
	}
	if _, err := os.Lstat(live); err != nil {
		t.Fatalf("the live socket's file was removed: %v", err)
	}

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := bindListener("x", listenAddr{"unix", file}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("bind over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "data" {
		t.Fatal("a regular file was touched")
	}
}

// inheritedOf returns a duplicate file of c, as a passed descriptor.
func inheritedOf(t *testing.T, c interface{ File() (*os.File, error) }) inheritedFile {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	return inheritedFile{f, "test"}
}

func TestOpenListenersInheritedAndBound(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	cfg := &Config{
		Listeners:   []Listener{{Name: "web"}, {Name: "dns"}, {Name: "own"}},
		listenAddrs: []listenAddr{{"tcp", tcp.Addr().String()}, {"udp", udp.LocalAddr().String()}, {"tcp", "127.0.0.1:0"}},
	}
	inherited := map[string]inheritedFile{
		"web":   inheritedOf(t, tcp.(*net.TCPListener)),
		"dns":   inheritedOf(t, udp.(*net.UDPConn)),
		"extra": inheritedOf(t, tcp.(*net.TCPListener)),
	}
	// Passed descriptors only.
	ls, err := openListeners(cfg, nil, inherited, false, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(inherited) != 0 {
		t.Errorf("inherited not emptied: %v", inherited)
	}
	var names []string
	for _, o := range ls {
		names = append(names, o.name)
		if o.origin != "test" {
			t.Errorf("%s: origin %q", o.name, o.origin)
		}
		if o.localAddr() != cfg.listenAddrs[slices.Index([]string{"web", "dns"}, o.name)].Address {
			t.Errorf("%s: address %s", o.name, o.localAddr())
		}
		o.close()
	}
	if !slices.Equal(names, []string{"web", "dns"}) {
		t.Fatalf("got %v", names)
	}
	// Then the missing one is bound.
	ls, err = openListeners(cfg, names, nil, true, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0].name != "own" || ls[0].origin != "bound" {
		t.Fatalf("got %+v", ls)
	}
	ls[0].close()
}

func TestOpenListenersKindMismatch(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	for _, a := range []listenAddr{{"udp", "127.0.0.1:1"}, {"unix", "/x"}, {"unixgram", "/x"}} {
		cfg := &Config{Listeners: []Listener{{Name: "a"}}, listenAddrs: []listenAddr{a}}
		in := map[string]inheritedFile{"a": inheritedOf(t, tcp.(*net.TCPListener))}
		_, err := openListeners(cfg, nil, in, false, testLogger(t))
		if err == nil || !strings.Contains(err.Error(), `listener "a" from test`) {
			t.Errorf("a TCP socket passed for %s: %v", a, err)
		}
	}
}
