package nbdserver

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// rawClient speaks the NBD wire protocol byte by byte, to test what real
// clients never send.
type rawClient struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t testing.TB, sock string) *rawClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return newRawClient(t, c)
}

func newRawClient(t testing.TB, c net.Conn) *rawClient {
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// expectClosed checks that the server hangs up (after sending nothing more).
func (c *rawClient) expectClosed() {
	c.t.Helper()
	b, err := io.ReadAll(c.r)
	if err != nil {
		c.t.Fatalf("want the server to close; read: %v", err)
	}
	if len(b) != 0 {
		c.t.Fatalf("want the server to close; got %d more bytes %x", len(b), b[:min(len(b), 32)])
	}
}

// greet reads the server's greeting and sends client flags.
func (c *rawClient) greet(clientFlags uint32) {
	c.t.Helper()
	g := c.read(18)
	if m := binary.BigEndian.Uint64(g); m != protocol.NEGOTIATION_MAGIC_OLDSTYLE {
		c.t.Fatalf("greeting magic %#x", m)
	}
	if m := binary.BigEndian.Uint64(g[8:]); m != protocol.NEGOTIATION_MAGIC_OPTION {
		c.t.Fatalf("greeting option magic %#x", m)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE|handshakeFlagNoZeroes {
		c.t.Fatalf("handshake flags %#x", f)
	}
	c.write(binary.BigEndian.AppendUint32(nil, clientFlags))
}

func optionBytes(id uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, protocol.NEGOTIATION_MAGIC_OPTION)
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func (c *rawClient) option(id uint32, data []byte) { c.t.Helper(); c.write(optionBytes(id, data)) }

type optReply struct {
	id, typ uint32
	data    []byte
}

func (c *rawClient) optionReply() optReply {
	c.t.Helper()
	h := c.read(optionReplySize)
	if m := binary.BigEndian.Uint64(h); m != protocol.NEGOTIATION_MAGIC_REPLY {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{id: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		c.t.Fatalf("option reply length %d", n)
	}
	r.data = c.read(int(n))
	return r
}

// infoData builds NBD_OPT_INFO/NBD_OPT_GO data.
func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// infoReplies reads NBD_REP_INFO replies up to the final reply, returning
// the info payloads by type and the final reply.
func (c *rawClient) infoReplies(id uint32) (map[uint16][]byte, optReply) {
	c.t.Helper()
	infos := map[uint16][]byte{}
	for {
		r := c.optionReply()
		if r.id != id {
			c.t.Fatalf("reply to option %d, want %d", r.id, id)
		}
		if r.typ != protocol.NEGOTIATION_TYPE_REPLY_INFO {
			return infos, r
		}
		if len(r.data) < 2 {
			c.t.Fatalf("info reply of %d bytes", len(r.data))
		}
		infos[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
}

// handshake greets and enters transmission with NBD_OPT_GO; it returns the
// export size and transmission flags.
func (c *rawClient) handshake(export string) (uint64, uint16) {
	c.t.Helper()
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.option(protocol.NEGOTIATION_ID_OPTION_GO, infoData(export, protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE))
	infos, final := c.infoReplies(protocol.NEGOTIATION_ID_OPTION_GO)
	if final.typ != protocol.NEGOTIATION_TYPE_REPLY_ACK {
		c.t.Fatalf("NBD_OPT_GO %q: reply type %#x %q", export, final.typ, final.data)
	}
	e := infos[protocol.NEGOTIATION_TYPE_INFO_EXPORT]
	if len(e) != 10 {
		c.t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(e))
	}
	return binary.BigEndian.Uint64(e), binary.BigEndian.Uint16(e[8:])
}

func requestBytes(typ uint16, cookie, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, protocol.TRANSMISSION_MAGIC_REQUEST)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

func (c *rawClient) request(typ uint16, cookie, off uint64, length uint32) {
	c.t.Helper()
	c.write(requestBytes(typ, cookie, off, length))
}

type simpleReply struct {
	cookie uint64
	errno  uint32
	data   []byte
}

// reply reads one simple reply; readLen gives the payload length of a
// successful reply to each READ cookie.
func (c *rawClient) reply(readLen map[uint64]int) simpleReply {
	c.t.Helper()
	h := c.read(simpleReplySize)
	if m := binary.BigEndian.Uint32(h); m != protocol.TRANSMISSION_MAGIC_REPLY {
		c.t.Fatalf("reply magic %#x", m)
	}
	r := simpleReply{errno: binary.BigEndian.Uint32(h[4:]), cookie: binary.BigEndian.Uint64(h[8:])}
	if r.errno == 0 && readLen[r.cookie] > 0 {
		r.data = c.read(readLen[r.cookie])
	}
	return r
}

// expectReply reads one reply and checks its cookie and error.
func (c *rawClient) expectReply(cookie uint64, errno uint32, readLen map[uint64]int) simpleReply {
	c.t.Helper()
	r := c.reply(readLen)
	if r.cookie != cookie || r.errno != errno {
		c.t.Fatalf("reply cookie %d errno %d, want cookie %d errno %d", r.cookie, r.errno, cookie, errno)
	}
	return r
}
