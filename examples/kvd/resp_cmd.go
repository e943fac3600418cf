package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/handoff-go/handoff/examples/kvd/store"
)

// respDatabases is the number of RESP databases, 0 to 15 as in Redis.
const respDatabases = 16

// maxClientName bounds CLIENT SETNAME, so that a state always fits.
const maxClientName = 512

// respReserved starts every key of a RESP database other than 0 in the
// store: "\x00" N "\x00" then the key. Database 0 holds the very keys HTTP
// sees. Keys that start with the byte 0 are refused by HTTP and by RESP
// (in any database), so no key of one database can be another's.
const respReserved = "\x00"

// reservedKey reports whether key is in the store's reserved space (the
// RESP databases other than 0), which clients cannot name directly.
func reservedKey(key string) bool { return strings.HasPrefix(key, respReserved) }

var errReservedKey = fmt.Errorf("%w: keys starting with the byte 0 are reserved", store.ErrInvalidKey)

// storeKey is where key of database db lives in the store.
func storeKey(db int, key []byte) (string, error) {
	if len(key) > 0 && key[0] == respReserved[0] {
		return "", errReservedKey
	}
	if db == 0 {
		return string(key), nil
	}
	return respReserved + strconv.Itoa(db) + respReserved + string(key), nil
}

// run runs one command and appends its reply to out; quit: close the
// connection once out is written.
func (c *respConn) run(out []byte, args [][]byte) (_ []byte, quit bool) {
	name := strings.ToLower(string(args[0]))
	argc := len(args)
	arity := func(ok bool) bool {
		if !ok {
			out = appendError(out, fmt.Sprintf("ERR wrong number of arguments for '%s' command", name))
		}
		return ok
	}
	switch name {
	case "ping":
		switch {
		case !arity(argc <= 2):
		case argc == 2:
			out = appendBulk(out, args[1])
		default:
			out = appendSimple(out, "PONG")
		}
	case "echo":
		if arity(argc == 2) {
			out = appendBulk(out, args[1])
		}
	case "quit":
		return appendSimple(out, "OK"), true
	case "get":
		if arity(argc == 2) {
			out = c.get(out, args[1])
		}
	case "set":
		switch {
		case argc > 3:
			out = appendError(out, "ERR syntax error (kvd's SET takes no options)")
		case arity(argc == 3):
			out = c.set(out, args[1], args[2])
		}
	case "del":
		if arity(argc >= 2) {
			out = c.del(out, args[1:])
		}
	case "exists":
		if arity(argc >= 2) {
			out = c.exists(out, args[1:])
		}
	case "select":
		if arity(argc == 2) {
			db, err := strconv.Atoi(string(args[1]))
			switch {
			case err != nil:
				out = appendError(out, "ERR value is not an integer or out of range")
			case db < 0 || db >= respDatabases:
				out = appendError(out, "ERR DB index is out of range")
			default:
				c.db = db
				out = appendSimple(out, "OK")
			}
		}
	case "client":
		if arity(argc >= 2) {
			out = c.client(out, args)
		}
	case "hello":
		// RESP3 is not spoken: clients go on in RESP2.
		out = appendError(out, "NOPROTO this server speaks RESP2 only")
	case "command":
		// No command table: clients (redis-cli's hints) do without.
		out = appendArrayLen(out, 0)
	case "config":
		out = c.config(out, args)
	case "info":
		out = appendBulkString(out, c.info())
	default:
		out = appendError(out, fmt.Sprintf("ERR unknown command '%s', with args beginning with: %s", clip(args[0]), argsPreview(args[1:])))
	}
	return out, false
}

func (c *respConn) get(out, key []byte) []byte {
	k, err := storeKey(c.db, key)
	if err != nil {
		return appendError(out, "ERR "+err.Error())
	}
	v, ok := c.s.d.store.Get(k)
	if !ok {
		return appendNil(out)
	}
	return appendBulk(out, v)
}

// set answers once the write is durable, as HTTP's PUT does.
func (c *respConn) set(out, key, value []byte) []byte {
	k, err := storeKey(c.db, key)
	if err == nil {
		_, err = c.s.d.store.Put(k, value)
		c.s.d.noteWrite(err)
	}
	if err != nil {
		return appendError(out, writeErrorReply(err))
	}
	return appendSimple(out, "OK")
}

// del deletes the keys that exist (each write durable before the answer)
// and counts them. A key deleted by another client between the check and
// the delete is still counted.
func (c *respConn) del(out []byte, keys [][]byte) []byte {
	n := int64(0)
	for _, key := range keys {
		k, err := storeKey(c.db, key)
		if err == nil {
			if _, ok := c.s.d.store.Get(k); !ok {
				continue
			}
			_, err = c.s.d.store.Delete(k)
			c.s.d.noteWrite(err)
		}
		if err != nil {
			return appendError(out, writeErrorReply(err))
		}
		n++
	}
	return appendInt(out, n)
}

func (c *respConn) exists(out []byte, keys [][]byte) []byte {
	n := int64(0)
	for _, key := range keys {
		k, err := storeKey(c.db, key)
		if err != nil {
			return appendError(out, "ERR "+err.Error())
		}
		if _, ok := c.s.d.store.Get(k); ok {
			n++
		}
	}
	return appendInt(out, n)
}

// writeErrorReply is the error reply to a refused write, with the codes
// a Redis client knows, in the same cases as HTTP's statuses (see
// writeStatus): a handoff or a shutdown in progress (a sealed or closed
// store) is TRYAGAIN, a disk that does not take writes MISCONF, a key or
// value out of bounds ERR.
func writeErrorReply(err error) string {
	switch {
	case errors.Is(err, store.ErrSealed), errors.Is(err, store.ErrClosed):
		return "TRYAGAIN " + err.Error()
	case errors.Is(err, store.ErrWriteFailed), errors.Is(err, store.ErrFailed):
		return "MISCONF " + err.Error()
	default:
		return "ERR " + err.Error()
	}
}

func (c *respConn) client(out []byte, args [][]byte) []byte {
	sub := strings.ToLower(string(args[1]))
	switch {
	case sub == "setname" && len(args) == 3:
		name := args[2]
		if len(name) > maxClientName {
			return appendError(out, fmt.Sprintf("ERR Client names are at most %d bytes long", maxClientName))
		}
		for _, b := range name {
			if b <= ' ' || b > '~' {
				return appendError(out, "ERR Client names cannot contain spaces, newlines or special characters.")
			}
		}
		c.name = string(name)
		return appendSimple(out, "OK")
	case sub == "getname" && len(args) == 2:
		if c.name == "" {
			return appendNil(out)
		}
		return appendBulkString(out, c.name)
	case sub == "id" && len(args) == 2:
		return appendInt(out, int64(c.id))
	case sub == "info" && len(args) == 2:
		return appendBulkString(out, c.clientInfo())
	case sub == "setinfo" && len(args) == 4:
		return appendSimple(out, "OK") // a client library's name and version: not kept
	case sub == "setname" || sub == "getname" || sub == "id" || sub == "info" || sub == "setinfo":
		return appendError(out, fmt.Sprintf("ERR wrong number of arguments for 'client|%s' command", sub))
	}
	return appendError(out, fmt.Sprintf("ERR unknown subcommand '%s'. Try CLIENT HELP.", clip(args[1])))
}

// clientInfo is CLIENT INFO: the fields of Redis's that kvd has. addr is
// the client's address as this process sees it: the same after a handoff
// on the same TCP connection.
func (c *respConn) clientInfo() string {
	return fmt.Sprintf("id=%d addr=%s laddr=%s name=%s db=%d pid=%d\n",
		c.id, c.nc.RemoteAddr(), c.nc.LocalAddr(), c.name, c.db, os.Getpid())
}

// config answers CONFIG GET for what redis-benchmark asks (save and
// appendonly): every write is fsync'd before it is answered.
func (c *respConn) config(out []byte, args [][]byte) []byte {
	if len(args) < 2 || !strings.EqualFold(string(args[1]), "get") {
		return appendError(out, "ERR kvd answers only CONFIG GET")
	}
	if len(args) < 3 {
		return appendError(out, "ERR wrong number of arguments for 'config|get' command")
	}
	known := map[string]string{"save": "", "appendonly": "yes", "appendfsync": "always", "databases": strconv.Itoa(respDatabases)}
	var pairs []string
	for _, a := range args[2:] {
		k := strings.ToLower(string(a))
		if v, ok := known[k]; ok {
			pairs = append(pairs, k, v)
		}
	}
	out = appendArrayLen(out, len(pairs))
	for _, p := range pairs {
		out = appendBulkString(out, p)
	}
	return out
}

func (c *respConn) info() string {
	s := c.s
	var b strings.Builder
	fmt.Fprintf(&b, "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\nkvd_build_id:%s\r\nprocess_id:%d\r\ntcp_port:%s\r\n",
		s.d.cfg.buildID, os.Getpid(), portOf(s.addr))
	fmt.Fprintf(&b, "\r\n# Clients\r\nconnected_clients:%d\r\n", s.openConns())
	fmt.Fprintf(&b, "\r\n# Stats\r\ntotal_connections_received:%d\r\nadopted_connections:%d\r\n", s.accepted.Load(), s.adopted.Load())
	fmt.Fprintf(&b, "\r\n# Persistence\r\nrevision:%d\r\n", s.d.store.Revision())
	return b.String()
}

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i+1:]
	}
	return addr
}

// clip shortens a client's word for an error message.
func clip(b []byte) string {
	if len(b) > 128 {
		b = b[:128]
	}
	return string(bytes.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, b))
}

func argsPreview(args [][]byte) string {
	var b strings.Builder
	for i, a := range args {
		if i == 8 || b.Len() > 128 {
			break
		}
		fmt.Fprintf(&b, "'%s' ", clip(a))
	}
	return b.String()
}
