//go:build linux

package handoff

import (
	"strconv"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/wire"
)

func activationEnv(n, names, pid string) map[string]string {
	return map[string]string{wire.EnvListenFDs: n, wire.EnvListenFDNames: names, wire.EnvListenPID: pid}
}

func TestParseActivation(t *testing.T) {
	tests := []struct {
		n, names, pid string
		want          []string
		wantErr       string
	}{
		{"", "", "", nil, ""},
		{"0", "", "", []string{}, ""},
		{"2", "", "", []string{"fd3", "fd4"}, ""},
		{"2", "http:dns", "", []string{"http", "dns"}, ""},
		{"2", "http:dns", "1", nil, ""}, // for another process
		{"2", "http:dns", "42", []string{"http", "dns"}, ""},
		{"x", "", "", nil, `LISTEN_FDS="x" is not a count`},
		{"-1", "", "", nil, `LISTEN_FDS="-1" is not a count`},
		{"1025", "", "", nil, "is not a count of descriptors (0 to 1024)"},
		{"2", "http", "", nil, "has 1 names for LISTEN_FDS=2"},
		{"2", "http:", "", nil, "name 2 of 2 is empty"},
		{"2", "a:a", "", nil, `listener name "a" passed twice`},
	}
	for _, tc := range tests {
		n, names, err := parseActivation(activationEnv(tc.n, tc.names, tc.pid), 42)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q %q %q: error %v, want one containing %q", tc.n, tc.names, tc.pid, err, tc.wantErr)
			}
			continue
		}
		if err != nil || n != len(tc.want) || strings.Join(names, ":") != strings.Join(tc.want, ":") {
			t.Errorf("%q %q %q: %d %q %v, want %q", tc.n, tc.names, tc.pid, n, names, err, tc.want)
		}
	}
}

// FuzzParseActivation: any environment is either refused with an error or
// gives n unique, non-empty names, n within bounds.
func FuzzParseActivation(f *testing.F) {
	f.Add("2", "http:dns", "")
	f.Add("1", "", "7")
	f.Add("3", "a::b", "")
	f.Add("0001", "x", "007")
	f.Add("1024", "", "")
	f.Fuzz(func(t *testing.T, n, names, pid string) {
		got, list, err := parseActivation(activationEnv(n, names, pid), 7)
		if err != nil {
			if got != 0 || list != nil {
				t.Fatalf("error %v with %d names %q", err, got, list)
			}
			return
		}
		if got < 0 || got > maxListenFDs || len(list) != got {
			t.Fatalf("n %d, %d names", got, len(list))
		}
		seen := map[string]bool{}
		for _, name := range list {
			if name == "" || seen[name] {
				t.Fatalf("names %q: empty or repeated", list)
			}
			seen[name] = true
		}
		if got > 0 && pid != "" && pid != strconv.Itoa(7) {
			t.Fatalf("LISTEN_PID=%q is not ours, yet %d descriptors were taken", pid, got)
		}
	})
}
