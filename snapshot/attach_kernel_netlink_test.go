package snapshot

import (
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// decoded is a serialized nbd netlink request taken apart again.
type decoded struct {
	family  uint16
	flags   uint16
	cmd     uint8
	version uint8
	attrs   map[uint16]syscall.NetlinkRouteAttr
	order   []uint16
}

func decode(t *testing.T, req *nl.NetlinkRequest) decoded {
	t.Helper()
	b := req.Serialize()
	if len(b) < unix.SizeofNlMsghdr+nl.SizeofGenlmsg {
		t.Fatalf("request of %d bytes", len(b))
	}
	ne := nl.NativeEndian()
	if got := ne.Uint32(b[0:]); int(got) != len(b) {
		t.Fatalf("nlmsg_len %d, serialized %d bytes", got, len(b))
	}
	d := decoded{
		family:  ne.Uint16(b[4:]),
		flags:   ne.Uint16(b[6:]),
		cmd:     b[unix.SizeofNlMsghdr],
		version: b[unix.SizeofNlMsghdr+1],
		attrs:   map[uint16]syscall.NetlinkRouteAttr{},
	}
	attrs, err := nl.ParseRouteAttr(b[unix.SizeofNlMsghdr+nl.SizeofGenlmsg:])
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range attrs {
		d.attrs[a.Attr.Type] = a
		d.order = append(d.order, a.Attr.Type)
	}
	return d
}

func (d decoded) u64(t *testing.T, typ uint16) uint64 {
	t.Helper()
	a, ok := d.attrs[typ]
	if !ok || len(a.Value) != 8 {
		t.Fatalf("attribute %d: %v (present %v), want a u64", typ, a.Value, ok)
	}
	return nl.NativeEndian().Uint64(a.Value)
}

func (d decoded) u32(t *testing.T, typ uint16) uint32 {
	t.Helper()
	a, ok := d.attrs[typ]
	if !ok || len(a.Value) != 4 {
		t.Fatalf("attribute %d: %v (present %v), want a u32", typ, a.Value, ok)
	}
	return nl.NativeEndian().Uint32(a.Value)
}

// sockets decodes NBD_ATTR_SOCKETS.
func (d decoded) sockets(t *testing.T) []uint32 {
	t.Helper()
	items, err := nl.ParseRouteAttr(d.attrs[nbdAttrSockets].Value)
	if err != nil {
		t.Fatal(err)
	}
	var fds []uint32
	for _, item := range items {
		if item.Attr.Type != nbdSockItem {
			t.Errorf("socket list item of type %d, want NBD_SOCK_ITEM", item.Attr.Type)
		}
		fields, err := nl.ParseRouteAttr(item.Value)
		if err != nil {
			t.Fatal(err)
		}
		if len(fields) != 1 || fields[0].Attr.Type != nbdSockFD || len(fields[0].Value) != 4 {
			t.Fatalf("socket item %+v, want one NBD_SOCK_FD u32", fields)
		}
		fds = append(fds, nl.NativeEndian().Uint32(fields[0].Value))
	}
	return fds
}

func checkHeader(t *testing.T, d decoded, cmd uint8) {
	t.Helper()
	if d.family != 0x1234 || d.cmd != cmd || d.version != nbdGenlVersion {
		t.Errorf("family %#x cmd %d version %d, want %#x %d %d", d.family, d.cmd, d.version, 0x1234, cmd, nbdGenlVersion)
	}
	// NLM_F_ACK: DISCONNECT and RECONFIGURE send no reply, and without an
	// ACK the request would wait for the socket's receive timeout.
	if want := uint16(unix.NLM_F_REQUEST | unix.NLM_F_ACK); d.flags != want {
		t.Errorf("flags %#x, want NLM_F_REQUEST|NLM_F_ACK (%#x)", d.flags, want)
	}
}

func TestNBDConnectRequest(t *testing.T) {
	d := decode(t, connectRequest(0x1234, nbdConnect{
		size: 64 << 20, blockSize: 4096, timeout: 60, deadConnTimeout: 120,
		serverFlags: nbdFlagHasFlags | nbdFlagReadOnly | nbdFlagCanMultiConn,
		backend:     "sluice/0123/sha256:abc", fds: []int{7, 9, 11},
	}))
	checkHeader(t, d, nbdCmdConnect)
	for typ, want := range map[uint16]uint64{
		nbdAttrSizeBytes: 64 << 20, nbdAttrBlockSizeBytes: 4096, nbdAttrTimeout: 60,
		nbdAttrDeadConnTimeout: 120, nbdAttrServerFlags: 0x103, nbdAttrClientFlags: 0,
	} {
		if got := d.u64(t, typ); got != want {
			t.Errorf("attribute %d = %d, want %d", typ, got, want)
		}
	}
	if got := d.sockets(t); len(got) != 3 || got[0] != 7 || got[1] != 9 || got[2] != 11 {
		t.Errorf("sockets %v, want [7 9 11]", got)
	}
	// NLA_STRING: the kernel copies it up to the NUL.
	if got := string(d.attrs[nbdAttrBackendIdentifier].Value); got != "sluice/0123/sha256:abc\x00" {
		t.Errorf("backend identifier %q", got)
	}
	if _, ok := d.attrs[nbdAttrIndex]; ok {
		t.Error("CONNECT names a device index: the kernel must pick a free one itself")
	}
}

func TestNBDReconfigureDisconnectStatusRequests(t *testing.T) {
	d := decode(t, reconfigureRequest(0x1234, 3, "sluice/x/img", []int{5}))
	checkHeader(t, d, nbdCmdReconfigure)
	if d.u32(t, nbdAttrIndex) != 3 || string(d.attrs[nbdAttrBackendIdentifier].Value) != "sluice/x/img\x00" {
		t.Errorf("RECONFIGURE attributes %+v", d.attrs)
	}
	if got := d.sockets(t); len(got) != 1 || got[0] != 5 {
		t.Errorf("RECONFIGURE sockets %v", got)
	}

	d = decode(t, disconnectRequest(0x1234, 12))
	checkHeader(t, d, nbdCmdDisconnect)
	if d.u32(t, nbdAttrIndex) != 12 || len(d.attrs) != 1 {
		t.Errorf("DISCONNECT attributes %+v", d.attrs)
	}

	d = decode(t, statusRequest(0x1234, -1))
	checkHeader(t, d, nbdCmdStatus)
	if len(d.attrs) != 0 {
		t.Errorf("STATUS of all devices has attributes %+v", d.attrs)
	}
	d = decode(t, statusRequest(0x1234, 4))
	if d.u32(t, nbdAttrIndex) != 4 {
		t.Errorf("STATUS of nbd4: %+v", d.attrs)
	}
}

// genlMessage builds a reply as the kernel sends it: the generic netlink
// header, then attributes (nested ones flagged NLA_F_NESTED, as
// nla_nest_start does).
func genlMessage(attrs ...*nl.RtAttr) []byte {
	b := []byte{nbdCmdStatus, nbdGenlVersion, 0, 0}
	for _, a := range attrs {
		b = append(b, a.Serialize()...)
	}
	return b
}

func TestParseStatusReply(t *testing.T) {
	list := nl.NewRtAttr(nbdAttrDeviceList|int(nl.NLA_F_NESTED), nil)
	for _, dev := range []struct {
		index     uint32
		connected byte
	}{{0, 1}, {1, 0}, {7, 1}} {
		item := list.AddRtAttr(nbdDeviceItem|int(nl.NLA_F_NESTED), nil)
		item.AddRtAttr(nbdDeviceIndex, nl.Uint32Attr(dev.index))
		item.AddRtAttr(nbdDeviceConnected, []byte{dev.connected})
	}
	got, err := parseStatusReply([][]byte{genlMessage(list)})
	if err != nil {
		t.Fatal(err)
	}
	want := []nbdStatus{{0, true}, {1, false}, {7, true}}
	if len(got) != len(want) {
		t.Fatalf("devices %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("device %d: %+v, want %+v", i, got[i], want[i])
		}
	}

	bad := nl.NewRtAttr(nbdAttrDeviceList, nil)
	bad.AddRtAttr(nbdDeviceItem, nil).AddRtAttr(nbdDeviceConnected, []byte{1})
	if _, err := parseStatusReply([][]byte{genlMessage(bad)}); err == nil {
		t.Error("a device item without an index was accepted")
	}
	if _, err := parseStatusReply([][]byte{{1, 2}}); err == nil {
		t.Error("a reply shorter than its header was accepted")
	}
}

func TestParseConnectReply(t *testing.T) {
	index := make([]byte, 4)
	binary.NativeEndian.PutUint32(index, 5)
	got, err := parseConnectReply([][]byte{genlMessage(nl.NewRtAttr(nbdAttrIndex, index))})
	if err != nil || got != 5 {
		t.Errorf("parseConnectReply = %d, %v; want 5", got, err)
	}
	if _, err := parseConnectReply([][]byte{genlMessage()}); err == nil {
		t.Error("a CONNECT reply without an index was accepted")
	}
}

func TestNetlinkErrors(t *testing.T) {
	err := netlinkError("CONNECT", unix.EPERM)
	if !errors.Is(err, ErrNoPermission) || !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Errorf("EPERM: %v", err)
	}
	err = netlinkError("CONNECT", unix.EBUSY)
	if !errors.Is(err, ErrDeviceBusy) || !strings.Contains(err.Error(), "CONNECT") {
		t.Errorf("EBUSY: %v", err)
	}
	if err := netlinkError("STATUS", unix.EINVAL); !errors.Is(err, unix.EINVAL) || errors.Is(err, ErrDeviceBusy) {
		t.Errorf("EINVAL: %v", err)
	}
}
