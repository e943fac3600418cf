package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// socketHolders names the processes that hold a listening socket at a
// (a TCP or UDP address, or a unix socket path), for an "address already
// in use" error: most often a daemon left running by a supervisor that
// died, which a restarted supervisor would adopt through its journal.
// Empty when nothing is found (or /proc is not readable).
func socketHolders(a listenAddr) string {
	inodes := boundInodes(a)
	if len(inodes) == 0 {
		return ""
	}
	var who []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]"), 10, 64)
			if err == nil && slices.Contains(inodes, ino) {
				who = append(who, describePID(pid))
				break
			}
		}
	}
	return strings.Join(who, ", ")
}

// describePID is "pid N (command line)".
func describePID(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	cmd := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if err != nil || cmd == "" {
		return fmt.Sprintf("pid %d", pid)
	}
	if len(cmd) > 120 {
		cmd = cmd[:120] + "…"
	}
	return fmt.Sprintf("pid %d (%s)", pid, cmd)
}

// boundInodes returns the inodes of the sockets bound at a, from
// /proc/net: TCP sockets in LISTEN state and UDP sockets on a's port (and
// address, unless a binds every address), unix sockets bound at a's path.
func boundInodes(a listenAddr) []uint64 {
	switch a.Network {
	case "unix", "unixgram":
		return unixInodes(a.Address)
	case "tcp", "udp":
		host, portStr, err := net.SplitHostPort(a.Address)
		port, perr := strconv.ParseUint(portStr, 10, 16)
		if err != nil || perr != nil || port == 0 {
			return nil
		}
		var out []uint64
		for _, table := range []string{a.Network, a.Network + "6"} {
			out = append(out, inetInodes("/proc/net/"+table, a.Network == "tcp", host, uint16(port))...)
		}
		return out
	}
	return nil
}

// inetInodes reads a /proc/net/{tcp,udp}[6] table: lines of
// "sl local_address rem_address st ... inode", addresses as hex "ADDR:PORT".
func inetInodes(path string, listenOnly bool, host string, port uint16) []uint64 {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	want := net.ParseIP(host)
	var out []uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || (listenOnly && fs[3] != "0A") {
			continue
		}
		addrHex, portHex, ok := strings.Cut(fs[1], ":")
		p, err := strconv.ParseUint(portHex, 16, 16)
		if !ok || err != nil || uint16(p) != port {
			continue
		}
		if want != nil && !want.IsUnspecified() {
			if ip := procIP(addrHex); ip != nil && !ip.IsUnspecified() && !ip.Equal(want) {
				continue
			}
		}
		if ino, err := strconv.ParseUint(fs[9], 10, 64); err == nil && ino != 0 {
			out = append(out, ino)
		}
	}
	return out
}

// procIP decodes an address of /proc/net/tcp: 32-bit words in host
// (little-endian) byte order.
func procIP(h string) net.IP {
	if len(h) != 8 && len(h) != 32 {
		return nil
	}
	ip := make(net.IP, len(h)/2)
	for w := 0; w < len(h)/8; w++ {
		for b := 0; b < 4; b++ {
			v, err := strconv.ParseUint(h[w*8+(3-b)*2:w*8+(3-b)*2+2], 16, 8)
			if err != nil {
				return nil
			}
			ip[w*4+b] = byte(v)
		}
	}
	return ip
}

// unixInodes reads /proc/net/unix for the sockets bound at path (its
// last field; the inode is the seventh).
func unixInodes(path string) []uint64 {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 8 && fs[7] == path {
			if ino, err := strconv.ParseUint(fs[6], 10, 64); err == nil {
				out = append(out, ino)
			}
		}
	}
	return out
}
