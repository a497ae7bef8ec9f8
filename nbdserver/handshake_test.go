package nbdserver

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

func handshakeServer(t *testing.T) (string, []byte) {
	t.Helper()
	data := randomBytes(3, 64<<10)
	s := newServer(t, []Export{
		{Name: "img", Description: "the image", Backend: memBackend(data)},
		{Name: "other", Backend: memBackend(make([]byte, 4096))},
	})
	sock, _ := serveUnix(t, s)
	return sock, data
}

// readsFirstBlock checks the connection is in transmission on the export
// holding data.
func (c *rawClient) readsFirstBlock(data []byte) {
	c.t.Helper()
	c.request(protocol.TRANSMISSION_TYPE_REQUEST_READ, 7, 0, 4096)
	r := c.expectReply(7, 0, map[uint64]int{7: 4096})
	if !bytes.Equal(r.data, data[:4096]) {
		c.t.Fatal("read returned wrong bytes")
	}
}

func TestHandshakeInfoThenGo(t *testing.T) {
	sock, data := handshakeServer(t)
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle)
	c.option(protocol.NEGOTIATION_ID_OPTION_INFO, infoData("img",
		protocol.NEGOTIATION_TYPE_INFO_NAME, protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION, protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE))
	infos, final := c.infoReplies(protocol.NEGOTIATION_ID_OPTION_INFO)
	if final.typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		t.Fatalf("NBD_OPT_INFO: final reply %#x", final.typ)
	}
	e := infos[protocol.NEGOTIATION_TYPE_INFO_EXPORT]
	if len(e) != 10 || binary.BigEndian.Uint64(e) != uint64(len(data)) {
		t.Fatalf("NBD_INFO_EXPORT %x", e)
	}
	if f := binary.BigEndian.Uint16(e[8:]); f != 1|2|4|256 {
		t.Errorf("transmission flags %#x, want HAS_FLAGS|READ_ONLY|SEND_FLUSH|CAN_MULTI_CONN", f)
	}
	if n := string(infos[protocol.NEGOTIATION_TYPE_INFO_NAME]); n != "img" {
		t.Errorf("NBD_INFO_NAME %q", n)
	}
	if d := string(infos[protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION]); d != "the image" {
		t.Errorf("NBD_INFO_DESCRIPTION %q", d)
	}
	bs := infos[protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 512 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != 32<<20 {
		t.Errorf("NBD_INFO_BLOCK_SIZE %x", bs)
	}

	// After INFO, still haggling: GO for the default export enters
	// transmission on the first export.
	c.option(protocol.NEGOTIATION_ID_OPTION_GO, infoData(""))
	infos, final = c.infoReplies(protocol.NEGOTIATION_ID_OPTION_GO)
	if final.typ != protocol.NEGOTIATION_TYPE_REPLY_ACK || string(infos[protocol.NEGOTIATION_TYPE_INFO_NAME]) != "img" {
		t.Fatalf("NBD_OPT_GO default: final %#x infos %v", final.typ, infos)
	}
	c.readsFirstBlock(data)
}

func TestHandshakeList(t *testing.T) {
	sock, _ := handshakeServer(t)
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle)
	c.option(protocol.NEGOTIATION_ID_OPTION_LIST, nil)
	var names []string
	for {
		r := c.optionReply()
		if r.typ == protocol.NEGOTIATION_TYPE_REPLY_ACK {
			break
		}
		if r.typ != protocol.NEGOTIATION_TYPE_REPLY_SERVER || len(r.data) < 4 {
			t.Fatalf("NBD_OPT_LIST reply %#x %x", r.typ, r.data)
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n]))
	}
	if len(names) != 2 || names[0] != "img" || names[1] != "other" {
		t.Errorf("listed %q", names)
	}
	c.option(protocol.NEGOTIATION_ID_OPTION_LIST, []byte("junk"))
	if r := c.optionReply(); r.typ != repErrInvalid {
		t.Errorf("NBD_OPT_LIST with data: reply %#x, want NBD_REP_ERR_INVALID", r.typ)
	}
	c.option(protocol.NEGOTIATION_ID_OPTION_ABORT, nil)
	if r := c.optionReply(); r.typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		t.Errorf("NBD_OPT_ABORT: reply %#x", r.typ)
	}
	c.expectClosed()
}

func TestHandshakeUnknownExport(t *testing.T) {
	sock, data := handshakeServer(t)
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle)
	for _, id := range []uint32{protocol.NEGOTIATION_ID_OPTION_INFO, protocol.NEGOTIATION_ID_OPTION_GO} {
		c.option(id, infoData("nope"))
		if _, final := c.infoReplies(id); final.typ != protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN {
			t.Errorf("option %d for an unknown export: reply %#x", id, final.typ)
		}
	}
	// The failed GO leaves the client haggling.
	c.option(protocol.NEGOTIATION_ID_OPTION_GO, infoData("img"))
	if _, final := c.infoReplies(protocol.NEGOTIATION_ID_OPTION_GO); final.typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		t.Fatalf("NBD_OPT_GO img: %#x", final.typ)
	}
	c.readsFirstBlock(data)

	// NBD_OPT_EXPORT_NAME cannot answer an error: the server hangs up.
	c = dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle)
	c.option(optExportName, []byte("nope"))
	c.expectClosed()
}

func TestHandshakeExportName(t *testing.T) {
	sock, data := handshakeServer(t)
	for _, noZeroes := range []bool{false, true} {
		c := dialRaw(t, sock)
		flags := clientFlagFixedNewstyle
		if noZeroes {
			flags |= clientFlagNoZeroes
		}
		c.greet(flags)
		c.option(optExportName, []byte("img"))
		b := c.read(10)
		if binary.BigEndian.Uint64(b) != uint64(len(data)) || binary.BigEndian.Uint16(b[8:]) != transmissionFlags {
			t.Fatalf("NBD_OPT_EXPORT_NAME reply %x", b)
		}
		if !noZeroes {
			if z := c.read(124); !bytes.Equal(z, make([]byte, 124)) {
				t.Fatalf("padding not zero: %x", z)
			}
		}
		c.readsFirstBlock(data)
	}
}

func TestHandshakeUnsupportedOptions(t *testing.T) {
	sock, data := handshakeServer(t)
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle)
	const (
		optStartTLS        = 5
		optStructuredReply = 8
		optSetMetaContext  = 10
	)
	for _, id := range []uint32{optStructuredReply, optStartTLS, optSetMetaContext, 99, 1 << 31} {
		c.option(id, []byte("some data"))
		if r := c.optionReply(); r.id != id || r.typ != protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED {
			t.Errorf("option %d: reply to %d type %#x, want NBD_REP_ERR_UNSUP", id, r.id, r.typ)
		}
	}
	c.option(protocol.NEGOTIATION_ID_OPTION_GO, infoData("img"))
	if _, final := c.infoReplies(protocol.NEGOTIATION_ID_OPTION_GO); final.typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		t.Fatalf("NBD_OPT_GO: %#x", final.typ)
	}
	c.readsFirstBlock(data)
}

func TestHandshakeMalformedInfo(t *testing.T) {
	sock, _ := handshakeServer(t)
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle)
	bad := map[string][]byte{
		"too short":            {0, 0, 0},
		"name beyond data":     append(binary.BigEndian.AppendUint32(nil, 100), "img\x00\x00"...),
		"name length huge":     append(binary.BigEndian.AppendUint32(nil, 0xffffffff), 0, 0),
		"count beyond data":    append(infoData("img")[:7], 5),
		"count short of data":  append(infoData("img", 1), 0, 3),
		"odd trailing byte":    append(infoData("img"), 0),
		"no count, name fills": append(binary.BigEndian.AppendUint32(nil, 5), "img!!"...),
	}
	for name, data := range bad {
		for _, id := range []uint32{protocol.NEGOTIATION_ID_OPTION_INFO, protocol.NEGOTIATION_ID_OPTION_GO} {
			c.option(id, data)
			if _, final := c.infoReplies(id); final.typ != repErrInvalid {
				t.Errorf("%s: option %d reply %#x, want NBD_REP_ERR_INVALID", name, id, final.typ)
			}
		}
	}
}

func TestHandshakeRefusesUnknownClientFlags(t *testing.T) {
	sock, _ := handshakeServer(t)
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle | 1<<5)
	c.expectClosed()
}
