package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/handoff-go/handoff/supervisor"
)

// openListener is one configured listening socket, open in this process
// until it has been handed to the Supervisor (which keeps a duplicate).
type openListener struct {
	name   string
	addr   listenAddr
	origin string         // "bound", "systemd" or "re-exec"
	ln     net.Listener   // stream sockets
	pc     net.PacketConn // datagram sockets
}

func (o *openListener) close() error {
	if o.ln != nil {
		return o.ln.Close()
	}
	return o.pc.Close()
}

func (o *openListener) localAddr() string {
	if o.ln != nil {
		return o.ln.Addr().String()
	}
	return o.pc.LocalAddr().String()
}

// openListeners returns one socket per configured listener not named in
// have: taken from inherited when a descriptor of that name was passed
// (systemd socket activation or our own re-exec), else bound here if bind
// is set. It takes every file in inherited and empties the map: the ones
// it uses end up in the returned listeners, the others are closed with a
// warning. On error nothing stays open.
func openListeners(cfg *Config, have []string, inherited map[string]inheritedFile, bind bool, log *slog.Logger) ([]*openListener, error) {
	var out []*openListener
	var errs []error
	for i, l := range cfg.Listeners {
		a := cfg.listenAddrs[i]
		if slices.Contains(have, l.Name) {
			continue
		}
		if in, ok := inherited[l.Name]; ok {
			delete(inherited, l.Name)
			o, err := listenerFromFile(l.Name, a, in.file)
			in.file.Close()
			if err != nil {
				errs = append(errs, fmt.Errorf("listener %q from %s: %w", l.Name, in.origin, err))
				continue
			}
			o.origin = in.origin
			out = append(out, o)
			continue
		}
		if !bind {
			continue
		}
		o, err := bindListener(l.Name, a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, o)
	}
	for name, in := range inherited {
		log.Warn("closing an inherited descriptor that no [[listeners]] entry names", "name", name, "from", in.origin)
		in.file.Close()
	}
	clear(inherited)
	if len(errs) > 0 {
		for _, o := range out {
			o.close()
		}
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// inheritedFile is a descriptor passed to this process, and by whom.
type inheritedFile struct {
	file   *os.File
	origin string
}

// systemdFiles returns the descriptors passed by systemd socket activation
// (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES) by name and clears those
// variables. A name passed twice is an error: it could not be matched to
// one [[listeners]] entry.
func systemdFiles() (map[string]inheritedFile, error) {
	files := activation.Files(true)
	out := map[string]inheritedFile{}
	var errs []error
	for _, f := range files {
		if _, dup := out[f.Name()]; dup {
			errs = append(errs, fmt.Errorf("systemd passed two descriptors named %q (set FileDescriptorName= in the socket unit)", f.Name()))
			f.Close()
			continue
		}
		out[f.Name()] = inheritedFile{f, "systemd"}
	}
	if len(errs) > 0 {
		closeInherited(out)
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func closeInherited(m map[string]inheritedFile) {
	for _, in := range m {
		in.file.Close()
	}
}

// listenerFromFile makes a listener of the kind addr asks for from a
// passed descriptor; f stays the caller's.
func listenerFromFile(name string, a listenAddr, f *os.File) (*openListener, error) {
	o := &openListener{name: name, addr: a}
	if a.stream() {
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("not a listening stream socket as %s needs: %w", a, err)
		}
		_, isTCP := ln.(*net.TCPListener)
		ul, isUnix := ln.(*net.UnixListener)
		if (a.Network == "tcp") != isTCP || (a.Network == "unix") != isUnix {
			ln.Close()
			return nil, fmt.Errorf("it is a %s listener, the config says %s", ln.Addr().Network(), a)
		}
		if isUnix {
			ul.SetUnlinkOnClose(false)
		}
		o.ln = ln
		return o, nil
	}
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("not a datagram socket as %s needs: %w", a, err)
	}
	_, isUDP := pc.(*net.UDPConn)
	_, isUnix := pc.(*net.UnixConn)
	if (a.Network == "udp") != isUDP || (a.Network == "unixgram") != isUnix {
		pc.Close()
		return nil, fmt.Errorf("it is a %s socket, the config says %s", pc.LocalAddr().Network(), a)
	}
	o.pc = pc
	return o, nil
}

// bindListener binds a. A unix socket path left behind by a dead process is
// removed first, but only when nothing answers on it; the listener never
// unlinks its path on Close, since every daemon and a re-executed
// supervisor share it.
func bindListener(name string, a listenAddr) (*openListener, error) {
	o := &openListener{name: name, addr: a, origin: "bound"}
	var err error
	switch a.Network {
	case "tcp":
		o.ln, err = net.Listen("tcp", a.Address)
	case "udp":
		o.pc, err = net.ListenPacket("udp", a.Address)
	case "unix":
		if err = removeStaleSocket(a.Network, a.Address); err == nil {
			var ul *net.UnixListener
			ul, err = net.ListenUnix("unix", &net.UnixAddr{Name: a.Address, Net: "unix"})
			if err == nil {
				ul.SetUnlinkOnClose(false)
				o.ln = ul
			}
		}
	case "unixgram":
		if err = removeStaleSocket(a.Network, a.Address); err == nil {
			o.pc, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: a.Address, Net: "unixgram"})
		}
	default:
		err = fmt.Errorf("unknown network %q", a.Network)
	}
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "is in use") {
			if who := socketHolders(a); who != "" {
				return nil, fmt.Errorf("listener %q: bind %s: %w; it is held by %s: a daemon still running from a supervisor that died? "+
					"A supervisor with a journal (key journal) adopts it on restart; without one, stop it first", name, a, err, who)
			}
		}
		return nil, fmt.Errorf("listener %q: bind %s: %w", name, a, err)
	}
	return o, nil
}

// staleProbeTimeout bounds the dial that tells a live socket from a stale one.
const staleProbeTimeout = time.Second

// removeStaleSocket removes the socket file at path if nothing listens on
// it. Anything else at path is left alone and reported.
func removeStaleSocket(network, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not removing it", path)
	}
	c, err := net.DialTimeout(network, path, staleProbeTimeout)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: something answers on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("cannot tell whether %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// handOver gives every listener to sup (which keeps its own duplicate) and
// then closes ours. Closing never unlinks a unix socket path.
func handOver(sup *supervisor.Supervisor, ls []*openListener, log *slog.Logger) error {
	var errs []error
	for _, o := range ls {
		var err error
		if o.ln != nil {
			err = sup.AddListener(o.name, o.ln)
		} else {
			err = sup.AddPacketConn(o.name, o.pc)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %q: %w", o.name, err))
		} else {
			log.Info("listener ready", "name", o.name, "addr", o.localAddr(), "from", o.origin)
		}
	}
	for _, o := range ls {
		o.close()
	}
	return errors.Join(errs...)
}
