package snapshot

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The kernel nbd driver's generic netlink interface. The numbers are those
// of include/uapi/linux/nbd-netlink.h (Linux 6.1; NBD_ATTR_BACKEND_IDENTIFIER
// since 5.13) and the NBD_FLAG_* of include/uapi/linux/nbd.h; each request
// is handled by nbd_genl_* in drivers/block/nbd.c.
const (
	nbdGenlFamily  = "nbd" // NBD_GENL_FAMILY_NAME
	nbdGenlVersion = 1     // NBD_GENL_VERSION

	// Commands (NBD_CMD_*).
	nbdCmdConnect     = 1
	nbdCmdDisconnect  = 2
	nbdCmdReconfigure = 3
	nbdCmdLinkDead    = 4 // multicast when a socket dies; not used here
	nbdCmdStatus      = 5

	// Attributes of the commands (NBD_ATTR_*).
	nbdAttrIndex             = 1  // u32: the device, /dev/nbdINDEX
	nbdAttrSizeBytes         = 2  // u64
	nbdAttrBlockSizeBytes    = 3  // u64
	nbdAttrTimeout           = 4  // u64 seconds: a request unanswered this long is requeued
	nbdAttrServerFlags       = 5  // u64: NBD_FLAG_*
	nbdAttrClientFlags       = 6  // u64: NBD_CFLAG_*
	nbdAttrSockets           = 7  // nested: nbdSockItem...
	nbdAttrDeadConnTimeout   = 8  // u64 seconds: how long requests wait for RECONFIGURE when every socket is dead
	nbdAttrDeviceList        = 9  // nested: nbdDeviceItem... (STATUS reply)
	nbdAttrBackendIdentifier = 10 // string: shown in /sys/block/nbdN/backend; RECONFIGURE must repeat it

	// NBD_ATTR_DEVICE_LIST holds NBD_DEVICE_ITEMs, each NBD_DEVICE_INDEX
	// (u32) and NBD_DEVICE_CONNECTED (u8).
	nbdDeviceItem      = 1
	nbdDeviceIndex     = 1
	nbdDeviceConnected = 2

	// NBD_ATTR_SOCKETS holds NBD_SOCK_ITEMs, each an NBD_SOCK_FD (u32).
	nbdSockItem = 1
	nbdSockFD   = 1

	// Server flags (NBD_FLAG_*, include/uapi/linux/nbd.h).
	nbdFlagHasFlags     = 1 << 0
	nbdFlagReadOnly     = 1 << 1
	nbdFlagCanMultiConn = 1 << 8
)

// nbdConnect is what a CONNECT tells the kernel about a new device.
type nbdConnect struct {
	size, blockSize          uint64
	timeout, deadConnTimeout uint64 // seconds
	serverFlags              uint64
	backend                  string
	fds                      []int // the kernel's ends of the socket pairs
}

// nbdStatus is one device in a STATUS reply: connected means it has a
// configuration (from CONNECT, or an open of an unconfigured device),
// that is, it is not free.
type nbdStatus struct {
	index     uint32
	connected bool
}

// newNBDRequest starts a request to the nbd family: the netlink header
// (NLM_F_ACK, so that commands without a reply, DISCONNECT and
// RECONFIGURE, are answered at once rather than left to the receive
// timeout) and the generic netlink header.
func newNBDRequest(family uint16, cmd uint8) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(family), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmd, Version: nbdGenlVersion})
	return req
}

func socketsAttr(fds []int) *nl.RtAttr {
	socks := nl.NewRtAttr(nbdAttrSockets, nil)
	for _, fd := range fds {
		item := socks.AddRtAttr(nbdSockItem, nil)
		item.AddRtAttr(nbdSockFD, nl.Uint32Attr(uint32(fd)))
	}
	return socks
}

func connectRequest(family uint16, c nbdConnect) *nl.NetlinkRequest {
	req := newNBDRequest(family, nbdCmdConnect)
	req.AddData(nl.NewRtAttr(nbdAttrSizeBytes, nl.Uint64Attr(c.size)))
	req.AddData(nl.NewRtAttr(nbdAttrBlockSizeBytes, nl.Uint64Attr(c.blockSize)))
	req.AddData(nl.NewRtAttr(nbdAttrTimeout, nl.Uint64Attr(c.timeout)))
	req.AddData(nl.NewRtAttr(nbdAttrDeadConnTimeout, nl.Uint64Attr(c.deadConnTimeout)))
	req.AddData(nl.NewRtAttr(nbdAttrServerFlags, nl.Uint64Attr(c.serverFlags)))
	// No NBD_CFLAG_DESTROY_ON_DISCONNECT or DISCONNECT_ON_CLOSE: the
	// device must outlive the agent and every close.
	req.AddData(nl.NewRtAttr(nbdAttrClientFlags, nl.Uint64Attr(0)))
	req.AddData(socketsAttr(c.fds))
	req.AddData(nl.NewRtAttr(nbdAttrBackendIdentifier, nl.ZeroTerminated(c.backend)))
	return req
}

func reconfigureRequest(family uint16, index uint32, backend string, fds []int) *nl.NetlinkRequest {
	req := newNBDRequest(family, nbdCmdReconfigure)
	req.AddData(nl.NewRtAttr(nbdAttrIndex, nl.Uint32Attr(index)))
	req.AddData(nl.NewRtAttr(nbdAttrBackendIdentifier, nl.ZeroTerminated(backend)))
	req.AddData(socketsAttr(fds))
	return req
}

func disconnectRequest(family uint16, index uint32) *nl.NetlinkRequest {
	req := newNBDRequest(family, nbdCmdDisconnect)
	req.AddData(nl.NewRtAttr(nbdAttrIndex, nl.Uint32Attr(index)))
	return req
}

// statusRequest asks about one device, or all of them (index < 0).
func statusRequest(family uint16, index int64) *nl.NetlinkRequest {
	req := newNBDRequest(family, nbdCmdStatus)
	if index >= 0 {
		req.AddData(nl.NewRtAttr(nbdAttrIndex, nl.Uint32Attr(uint32(index))))
	}
	return req
}

// parseConnectReply reads the device index from a CONNECT reply.
func parseConnectReply(msgs [][]byte) (uint32, error) {
	for _, m := range msgs {
		attrs, err := genlAttrs(m)
		if err != nil {
			return 0, err
		}
		for _, a := range attrs {
			if a.Attr.Type&nl.NLA_TYPE_MASK == nbdAttrIndex && len(a.Value) >= 4 {
				return nl.NativeEndian().Uint32(a.Value), nil
			}
		}
	}
	return 0, errors.New("CONNECT reply without a device index")
}

// parseStatusReply reads the devices of a STATUS reply.
func parseStatusReply(msgs [][]byte) ([]nbdStatus, error) {
	var list []nbdStatus
	for _, m := range msgs {
		attrs, err := genlAttrs(m)
		if err != nil {
			return nil, err
		}
		for _, a := range attrs {
			if a.Attr.Type&nl.NLA_TYPE_MASK != nbdAttrDeviceList {
				continue
			}
			items, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return nil, fmt.Errorf("STATUS device list: %w", err)
			}
			for _, item := range items {
				if item.Attr.Type&nl.NLA_TYPE_MASK != nbdDeviceItem {
					continue
				}
				fields, err := nl.ParseRouteAttr(item.Value)
				if err != nil {
					return nil, fmt.Errorf("STATUS device item: %w", err)
				}
				var st nbdStatus
				var hasIndex bool
				for _, f := range fields {
					switch f.Attr.Type & nl.NLA_TYPE_MASK {
					case nbdDeviceIndex:
						if len(f.Value) >= 4 {
							st.index, hasIndex = nl.NativeEndian().Uint32(f.Value), true
						}
					case nbdDeviceConnected:
						st.connected = len(f.Value) >= 1 && f.Value[0] != 0
					}
				}
				if !hasIndex {
					return nil, errors.New("STATUS device item without an index")
				}
				list = append(list, st)
			}
		}
	}
	return list, nil
}

// genlAttrs returns the attributes after a message's generic netlink
// header.
func genlAttrs(msg []byte) ([]syscall.NetlinkRouteAttr, error) {
	if len(msg) < nl.SizeofGenlmsg {
		return nil, fmt.Errorf("generic netlink message of %d bytes", len(msg))
	}
	return nl.ParseRouteAttr(msg[nl.SizeofGenlmsg:])
}

// nbdNetlink sends requests to the nbd family.
type nbdNetlink struct {
	family uint16
}

// lookupNBDFamily finds the nbd family; it exists once the nbd module is
// loaded.
func lookupNBDFamily() (nbdNetlink, error) {
	f, err := netlink.GenlFamilyGet(nbdGenlFamily)
	if err != nil {
		return nbdNetlink{}, fmt.Errorf("generic netlink family %q: %w", nbdGenlFamily, err)
	}
	return nbdNetlink{family: f.ID}, nil
}

func (n nbdNetlink) connect(c nbdConnect) (uint32, error) {
	msgs, err := connectRequest(n.family, c).Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return 0, netlinkError("CONNECT", err)
	}
	return parseConnectReply(msgs)
}

func (n nbdNetlink) reconfigure(index uint32, backend string, fds []int) error {
	if _, err := reconfigureRequest(n.family, index, backend, fds).Execute(unix.NETLINK_GENERIC, 0); err != nil {
		return netlinkError("RECONFIGURE", err)
	}
	return nil
}

func (n nbdNetlink) disconnect(index uint32) error {
	if _, err := disconnectRequest(n.family, index).Execute(unix.NETLINK_GENERIC, 0); err != nil {
		return netlinkError("DISCONNECT", err)
	}
	return nil
}

// status reports one device (index >= 0) or all of them.
func (n nbdNetlink) status(index int64) ([]nbdStatus, error) {
	msgs, err := statusRequest(n.family, index).Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return nil, netlinkError("STATUS", err)
	}
	return parseStatusReply(msgs)
}

// netlinkError names the command and, for the errors a caller can do
// something about, the likely cause.
func netlinkError(cmd string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("nbd netlink %s: %w: %w (needs CAP_SYS_ADMIN: run sluiced as root)", cmd, ErrNoPermission, err)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("nbd netlink %s: %w: %w", cmd, ErrDeviceBusy, err)
	}
	return fmt.Errorf("nbd netlink %s: %w", cmd, err)
}
