package handoff

import (
	"net"
	"strings"
	"testing"
)

func TestSplitAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8080":   "tcp 127.0.0.1:8080",
		"[::1]:53":         "tcp [::1]:53",
		"unix:/run/x.sock": "unix /run/x.sock",
		"udp::53":          "udp :53",
		"unixgram:/run/g":  "unixgram /run/g",
		"localhost":        "error: missing port",
		"unix:":            `error: address "unix:" names no unix address`,
		"":                 `error: address "" names no tcp address`,
		"udp:nope":         "error: missing port",
	} {
		network, address, err := splitAddr(in)
		got := network + " " + address
		if err != nil {
			got = "error: " + err.Error()
		}
		if !strings.HasPrefix(got, want) && !(strings.HasPrefix(want, "error: ") && strings.Contains(got, strings.TrimPrefix(want, "error: "))) {
			t.Errorf("splitAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzSplitAddr: an address is refused or split into a known network and
// a non-empty address that, with its prefix, is the input again.
func FuzzSplitAddr(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8080", "unix:/x", "udp:[::1]:53", "unixgram:/g", "unix:", "tcp:1:2", ":0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		network, address, err := splitAddr(in)
		if err != nil {
			return
		}
		if address == "" {
			t.Fatalf("%q: empty address", in)
		}
		switch network {
		case "tcp":
			if address != in {
				t.Fatalf("%q: tcp address %q", in, address)
			}
		case "unix", "unixgram", "udp":
			if network+":"+address != in {
				t.Fatalf("%q: %s address %q", in, network, address)
			}
		default:
			t.Fatalf("%q: network %q", in, network)
		}
		if network == "tcp" || network == "udp" {
			if _, _, err := net.SplitHostPort(address); err != nil {
				t.Fatalf("%q accepted, but %v", in, err)
			}
		}
	})
}
