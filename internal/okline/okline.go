// Package okline is the format of the trigger socket's "ok:" replies, which
// the supervisor writes and its clients (the CLI, the soak) read: fields
// key=value, a value bare or Go-quoted.
package okline

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// Value writes a field value bare when Fields reads it back
// as it is (a handoff id always is), else Go-quoted.
func Value(s string) string {
	if s == "" || strings.ContainsAny(s, " \"\\") || strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// Fields parses the key=value fields of an "ok:" reply; a value is
// a bare word or a Go-quoted string.
func Fields(s string) (map[string]string, error) {
	out := map[string]string{}
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		key, rest, ok := strings.Cut(s, "=")
		if !ok || key == "" || strings.ContainsAny(key, " \"") {
			return nil, fmt.Errorf("malformed field at %q", s)
		}
		var val string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return nil, fmt.Errorf("field %s: %w", key, err)
			}
			val, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			val, rest, _ = strings.Cut(rest, " ")
		}
		out[key] = val
		s = rest
	}
	return out, nil
}
