package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/examples/kvd/store"
)

// The RESP2 wire format (the Redis protocol), as kvd reads and writes it.
//
// A command is an array of bulk strings (*N\r\n then N times $LEN\r\nBYTES\r\n),
// as every client library sends, or an inline command: one line of words
// separated by spaces, with "double" or 'single' quotes as redis-server
// reads them (what telnet users type). Replies are simple strings (+OK),
// errors (-ERR ...), integers (:N), bulk strings ($LEN, $-1 for nil) and
// arrays (*N).
//
// Sizes are bounded: an input that breaks a bound, or is not RESP, is a
// protocol error: the connection is answered -ERR Protocol error: ... and
// closed, since the rest of the stream cannot be told apart from data.
const (
	// maxBulkLen bounds one argument: a value as big as the store takes.
	maxBulkLen = store.MaxValueLen
	// maxArgs bounds the arguments of one command.
	maxArgs = 1024
	// maxInlineLen bounds an inline command's line (as redis-server does).
	maxInlineLen = 64 << 10
	// maxCommandLen bounds the arguments of one command together, so that
	// a command is buffered whole within this much (plus the framing).
	maxCommandLen = maxBulkLen + 64<<10
)

// protoError is input that is not RESP or breaks a bound.
type protoError string

func (e protoError) Error() string { return "Protocol error: " + string(e) }

// parseCommand parses the first command in buf. It returns its arguments
// (slices of buf) and the bytes it took; n == 0 with a nil error means buf
// holds no complete command yet. An empty inline line is consumed with no
// arguments. The error is a protoError.
func parseCommand(buf []byte) (args [][]byte, n int, err error) {
	if len(buf) == 0 {
		return nil, 0, nil
	}
	if buf[0] != '*' {
		return parseInline(buf)
	}
	count, pos, err := parseHeader(buf, 0, '*')
	if err != nil || pos == 0 {
		return nil, 0, err
	}
	if count > maxArgs {
		return nil, 0, protoError("invalid multibulk length")
	}
	if count <= 0 {
		return nil, pos, nil // *0 and *-1: nothing to run, as redis-server does
	}
	args = make([][]byte, 0, count)
	total := 0
	for range count {
		if pos >= len(buf) {
			return nil, 0, nil
		}
		if buf[pos] != '$' {
			return nil, 0, protoError(fmt.Sprintf("expected '$', got '%s'", printable(buf[pos])))
		}
		size, next, err := parseHeader(buf, pos, '$')
		if err != nil || next == 0 {
			return nil, 0, err
		}
		if size < 0 || size > maxBulkLen {
			return nil, 0, protoError("invalid bulk length")
		}
		if total += size; total > maxCommandLen {
			return nil, 0, protoError("command too big")
		}
		end := next + size
		if end+2 > len(buf) {
			return nil, 0, nil
		}
		if buf[end] != '\r' || buf[end+1] != '\n' {
			return nil, 0, protoError("bulk string not terminated by CRLF")
		}
		args = append(args, buf[next:end:end])
		pos = end + 2
	}
	return args, pos, nil
}

// parseHeader reads a line "<kind><integer>\r\n" at buf[at:] and returns
// the integer and the offset after the line; 0 if the line is incomplete.
func parseHeader(buf []byte, at int, kind byte) (v, next int, err error) {
	what := "multibulk"
	if kind == '$' {
		what = "bulk"
	}
	end := bytes.IndexByte(buf[at:], '\n')
	if end < 0 {
		if len(buf)-at > 32 {
			return 0, 0, protoError("too big " + what + " count string")
		}
		return 0, 0, nil
	}
	line := buf[at+1 : at+end]
	if len(line) == 0 || line[len(line)-1] != '\r' {
		return 0, 0, protoError("invalid " + what + " length")
	}
	v, err = strconv.Atoi(string(line[:len(line)-1]))
	if err != nil || v < -1 || (kind == '$' && v < 0) {
		return 0, 0, protoError("invalid " + what + " length")
	}
	return v, at + end + 1, nil
}

// parseInline parses one inline command line.
func parseInline(buf []byte) ([][]byte, int, error) {
	end := bytes.IndexByte(buf, '\n')
	if end < 0 {
		if len(buf) > maxInlineLen {
			return nil, 0, protoError("too big inline request")
		}
		return nil, 0, nil
	}
	if end > maxInlineLen {
		return nil, 0, protoError("too big inline request")
	}
	line := bytes.TrimSuffix(buf[:end], []byte("\r"))
	args, err := splitArgs(line)
	if err != nil {
		return nil, 0, err
	}
	return args, end + 1, nil
}

// splitArgs splits an inline line into words as redis-server's
// sdssplitargs does: spaces separate words; "double quotes" take the
// escapes \n \r \t \b \a \\ \" and \xHH; 'single quotes' only \'; a closing
// quote must be followed by a space or the end of the line.
func splitArgs(line []byte) ([][]byte, error) {
	var args [][]byte
	i := 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i == len(line) {
			return args, nil
		}
		var word []byte
		switch line[i] {
		case '"':
			i++
			for {
				if i == len(line) {
					return nil, protoError("unbalanced quotes in request")
				}
				c := line[i]
				if c == '"' {
					i++
					break
				}
				if c == '\\' && i+3 < len(line) && line[i+1] == 'x' && isHex(line[i+2]) && isHex(line[i+3]) {
					word = append(word, unhex(line[i+2])<<4|unhex(line[i+3]))
					i += 4
					continue
				}
				if c == '\\' && i+1 < len(line) {
					i++
					switch line[i] {
					case 'n':
						c = '\n'
					case 'r':
						c = '\r'
					case 't':
						c = '\t'
					case 'b':
						c = '\b'
					case 'a':
						c = '\a'
					default:
						c = line[i]
					}
				}
				word = append(word, c)
				i++
			}
		case '\'':
			i++
			for {
				if i == len(line) {
					return nil, protoError("unbalanced quotes in request")
				}
				c := line[i]
				if c == '\'' {
					i++
					break
				}
				if c == '\\' && i+1 < len(line) && line[i+1] == '\'' {
					i++
					c = '\''
				}
				word = append(word, c)
				i++
			}
		default:
			start := i
			for i < len(line) && !isSpace(line[i]) {
				i++
			}
			word = line[start:i:i]
		}
		if word == nil {
			word = []byte{}
		}
		if i < len(line) && !isSpace(line[i]) {
			return nil, protoError("unbalanced quotes in request")
		}
		if len(args) == maxArgs {
			return nil, protoError("invalid multibulk length")
		}
		args = append(args, word)
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// printable shows one input byte in an error message.
func printable(c byte) string {
	if c < ' ' || c > '~' {
		return fmt.Sprintf("\\x%02x", c)
	}
	return string(c)
}

// Reply encoders: each appends one reply to b.

func appendSimple(b []byte, s string) []byte {
	b = append(b, '+')
	b = append(b, s...)
	return append(b, '\r', '\n')
}

// appendError appends an error reply; msg starts with its code (ERR,
// TRYAGAIN...). Line breaks in msg become spaces, as the format requires.
func appendError(b []byte, msg string) []byte {
	b = append(b, '-')
	for i := range len(msg) {
		c := msg[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return append(b, '\r', '\n')
}

func appendInt(b []byte, v int64) []byte {
	b = append(b, ':')
	b = strconv.AppendInt(b, v, 10)
	return append(b, '\r', '\n')
}

func appendBulk(b, v []byte) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(v)), 10)
	b = append(b, '\r', '\n')
	b = append(b, v...)
	return append(b, '\r', '\n')
}

func appendBulkString(b []byte, v string) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(v)), 10)
	b = append(b, '\r', '\n')
	b = append(b, v...)
	return append(b, '\r', '\n')
}

func appendNil(b []byte) []byte { return append(b, "$-1\r\n"...) }

func appendArrayLen(b []byte, n int) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\r', '\n')
}

// respState is what a RESP connection carries across a handoff: its
// selected database, its name and id, and the bytes read from the client
// and not parsed yet (an incomplete command).
type respState struct {
	DB       int
	ID       uint64
	Name     string
	Unparsed []byte
}

// respStateVersion starts the encoding of a respState: the version byte,
// then the database, the id and the name's length as uvarints, the name,
// and the unparsed bytes to the end.
const respStateVersion = 1

// maxStateOverhead is the most the encoding adds to the unparsed bytes:
// the version, three uvarints, and a name of at most maxClientName bytes.
const maxStateOverhead = 1 + 3*binary.MaxVarintLen64 + maxClientName

// maxUnparsed is the most unparsed input a connection can carry across a
// handoff; one holding more is not at a boundary it can be passed at.
const maxUnparsed = handoff.MaxConnState - maxStateOverhead

func (st respState) encode() []byte {
	b := make([]byte, 0, maxStateOverhead+len(st.Unparsed))
	b = append(b, respStateVersion)
	b = binary.AppendUvarint(b, uint64(st.DB))
	b = binary.AppendUvarint(b, st.ID)
	b = binary.AppendUvarint(b, uint64(len(st.Name)))
	b = append(b, st.Name...)
	return append(b, st.Unparsed...)
}

var errBadState = errors.New("kvd: bad RESP connection state")

func decodeRESPState(b []byte) (respState, error) {
	var st respState
	if len(b) == 0 || b[0] != respStateVersion {
		return st, fmt.Errorf("%w: not version %d", errBadState, respStateVersion)
	}
	b = b[1:]
	db, n := binary.Uvarint(b)
	if n <= 0 || db >= respDatabases {
		return st, fmt.Errorf("%w: database", errBadState)
	}
	b = b[n:]
	id, n := binary.Uvarint(b)
	if n <= 0 {
		return st, fmt.Errorf("%w: id", errBadState)
	}
	b = b[n:]
	nl, n := binary.Uvarint(b)
	if n <= 0 || nl > maxClientName || nl > uint64(len(b)-n) {
		return st, fmt.Errorf("%w: name", errBadState)
	}
	b = b[n:]
	st.DB, st.ID, st.Name = int(db), id, string(b[:nl])
	if rest := b[nl:]; len(rest) > 0 {
		st.Unparsed = bytes.Clone(rest)
	}
	return st, nil
}
