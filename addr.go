package handoff

import (
	"fmt"
	"net"
	"strings"
)

// splitAddr turns a Config.Listen address into a network and an address.
func splitAddr(addr string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(addr, "unix:"):
		network, address = "unix", strings.TrimPrefix(addr, "unix:")
	case strings.HasPrefix(addr, "unixgram:"):
		network, address = "unixgram", strings.TrimPrefix(addr, "unixgram:")
	case strings.HasPrefix(addr, "udp:"):
		network, address = "udp", strings.TrimPrefix(addr, "udp:")
	default:
		network, address = "tcp", addr
	}
	if address == "" {
		return "", "", fmt.Errorf("address %q names no %s address", addr, network)
	}
	if network == "tcp" || network == "udp" {
		if _, _, err := net.SplitHostPort(address); err != nil {
			return "", "", fmt.Errorf("address %q: %w (want host:port, unix:/path, udp:host:port or unixgram:/path)", addr, err)
		}
	}
	return network, address, nil
}

// listenAddr binds addr (see splitAddr): a net.Listener for stream
// networks, a net.PacketConn for datagram ones.
func listenAddr(addr string) (any, error) {
	network, address, err := splitAddr(addr)
	if err != nil {
		return nil, err
	}
	switch network {
	case "udp", "unixgram":
		return net.ListenPacket(network, address)
	default:
		return net.Listen(network, address)
	}
}
