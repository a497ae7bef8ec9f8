package nbdserver

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// handshake is the fixed newstyle negotiation on one connection.
type handshake struct {
	s        *Server
	c        net.Conn
	r        *bufio.Reader
	noZeroes bool
	data     []byte // option data, reused; never longer than maxOptionData
	out      []byte // reply being built, reused
}

// run negotiates until the client picks an export (returned) or aborts
// (nil export, nil error).
func (h *handshake) run() (*export, error) {
	if err := h.c.SetDeadline(time.Now().Add(h.s.opts.handshakeTimeout)); err != nil {
		return nil, err
	}
	h.out = binary.BigEndian.AppendUint64(h.out[:0], protocol.NEGOTIATION_MAGIC_OLDSTYLE)
	h.out = binary.BigEndian.AppendUint64(h.out, protocol.NEGOTIATION_MAGIC_OPTION)
	h.out = binary.BigEndian.AppendUint16(h.out, protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE|handshakeFlagNoZeroes)
	if _, err := h.c.Write(h.out); err != nil {
		return nil, err
	}
	var flags [4]byte
	if _, err := io.ReadFull(h.r, flags[:]); err != nil {
		return nil, fmt.Errorf("client flags: %w", err)
	}
	cf := binary.BigEndian.Uint32(flags[:])
	if cf&^(clientFlagFixedNewstyle|clientFlagNoZeroes) != 0 {
		return nil, fmt.Errorf("client flags %#x: %w", cf, ErrClientFlags)
	}
	h.noZeroes = cf&clientFlagNoZeroes != 0

	for {
		exp, done, err := h.option()
		if err != nil || done {
			return exp, err
		}
	}
}

// option reads and answers one option; done means negotiation is over.
func (h *handshake) option() (exp *export, done bool, err error) {
	var hb [optionHeaderSize]byte
	if _, err := io.ReadFull(h.r, hb[:]); err != nil {
		if err == io.EOF {
			// The client went away between options; a soft NBD_OPT_ABORT
			// without waiting for the reply looks the same.
			return nil, true, nil
		}
		return nil, false, fmt.Errorf("option header: %w", err)
	}
	oh := protocol.NegotiationOptionHeader{
		OptionMagic: binary.BigEndian.Uint64(hb[0:]),
		ID:          binary.BigEndian.Uint32(hb[8:]),
		Length:      binary.BigEndian.Uint32(hb[12:]),
	}
	if oh.OptionMagic != protocol.NEGOTIATION_MAGIC_OPTION {
		return nil, false, fmt.Errorf("option magic %#x: %w", oh.OptionMagic, ErrBadMagic)
	}
	if oh.Length > maxOptionData {
		if oh.ID == optExportName {
			// NBD_OPT_EXPORT_NAME has no error reply: hang up.
			return nil, false, fmt.Errorf("export name of %d bytes: %w", oh.Length, ErrUnknownExport)
		}
		if _, err := io.CopyN(io.Discard, h.r, int64(oh.Length)); err != nil {
			return nil, false, fmt.Errorf("option %d data: %w", oh.ID, err)
		}
		return nil, false, h.reply(oh.ID, repErrTooBig, []byte("option data too long"))
	}
	if cap(h.data) < int(oh.Length) {
		h.data = make([]byte, oh.Length)
	}
	data := h.data[:oh.Length]
	if _, err := io.ReadFull(h.r, data); err != nil {
		return nil, false, fmt.Errorf("option %d data: %w", oh.ID, err)
	}

	switch oh.ID {
	case optExportName:
		return h.exportName(string(data))
	case protocol.NEGOTIATION_ID_OPTION_ABORT:
		// The client may hang up without reading the ACK; that is no error.
		_ = h.reply(oh.ID, protocol.NEGOTIATION_TYPE_REPLY_ACK, nil)
		return nil, true, nil
	case protocol.NEGOTIATION_ID_OPTION_LIST:
		return nil, false, h.list(data)
	case protocol.NEGOTIATION_ID_OPTION_INFO, protocol.NEGOTIATION_ID_OPTION_GO:
		exp, err := h.info(oh.ID, data)
		if err != nil || exp == nil || oh.ID == protocol.NEGOTIATION_ID_OPTION_INFO {
			return nil, false, err
		}
		return exp, true, h.c.SetDeadline(time.Time{})
	default:
		// Includes NBD_OPT_STRUCTURED_REPLY (simple replies only) and
		// NBD_OPT_STARTTLS.
		return nil, false, h.reply(oh.ID, protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED, nil)
	}
}

// exportName ends negotiation the old way: no error reply is possible, so an
// unknown export hangs up.
func (h *handshake) exportName(name string) (*export, bool, error) {
	exp, ok := h.s.export(name)
	if !ok {
		return nil, false, fmt.Errorf("export %q: %w", name, ErrUnknownExport)
	}
	h.out = binary.BigEndian.AppendUint64(h.out[:0], uint64(exp.Backend.Size()))
	h.out = binary.BigEndian.AppendUint16(h.out, transmissionFlags)
	if !h.noZeroes {
		h.out = append(h.out, make([]byte, 124)...)
	}
	if _, err := h.c.Write(h.out); err != nil {
		return nil, false, err
	}
	return exp, true, h.c.SetDeadline(time.Time{})
}

func (h *handshake) list(data []byte) error {
	if len(data) != 0 {
		return h.reply(protocol.NEGOTIATION_ID_OPTION_LIST, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
	}
	for _, e := range h.s.Exports() {
		p := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
		p = append(p, e.Name...)
		p = append(p, e.Description...)
		if err := h.reply(protocol.NEGOTIATION_ID_OPTION_LIST, protocol.NEGOTIATION_TYPE_REPLY_SERVER, p); err != nil {
			return err
		}
	}
	return h.reply(protocol.NEGOTIATION_ID_OPTION_LIST, protocol.NEGOTIATION_TYPE_REPLY_ACK, nil)
}

// info answers NBD_OPT_INFO and NBD_OPT_GO; it returns the export when the
// reply ended in NBD_REP_ACK.
func (h *handshake) info(id uint32, data []byte) (*export, error) {
	// Data: u32 name length, name, u16 count, count x u16 info types.
	if len(data) < 6 {
		return nil, h.reply(id, repErrInvalid, []byte("option data too short"))
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) {
		return nil, h.reply(id, repErrInvalid, []byte("name length beyond option data"))
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	count := int(binary.BigEndian.Uint16(rest))
	if len(rest)-2 != 2*count {
		return nil, h.reply(id, repErrInvalid, []byte("information request count does not match option length"))
	}
	exp, ok := h.s.export(name)
	if !ok {
		return nil, h.reply(id, protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN, fmt.Appendf(nil, "no export %q", name))
	}
	// Everything is sent whether asked for or not (clients ignore what they
	// do not know); block sizes must be, as they are not the defaults.
	infos := []any{
		protocol.NegotiationReplyInfo{
			Type:              protocol.NEGOTIATION_TYPE_INFO_EXPORT,
			Size:              uint64(exp.Backend.Size()),
			TransmissionFlags: transmissionFlags,
		},
		protocol.NegotiationReplyBlockSize{
			Type:               protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE,
			MinimumBlockSize:   MinimumBlockSize,
			PreferredBlockSize: PreferredBlockSize,
			MaximumBlockSize:   MaximumPayload,
		},
	}
	for _, info := range infos {
		p, err := binary.Append(nil, binary.BigEndian, info)
		if err != nil {
			return nil, err
		}
		if err := h.reply(id, protocol.NEGOTIATION_TYPE_REPLY_INFO, p); err != nil {
			return nil, err
		}
	}
	texts := []struct {
		typ  uint16
		text string
	}{
		{protocol.NEGOTIATION_TYPE_INFO_NAME, exp.Name},
		{protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION, exp.Description},
	}
	for _, t := range texts {
		if t.text == "" && t.typ == protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION {
			continue
		}
		p := binary.BigEndian.AppendUint16(nil, t.typ)
		if err := h.reply(id, protocol.NEGOTIATION_TYPE_REPLY_INFO, append(p, t.text...)); err != nil {
			return nil, err
		}
	}
	if err := h.reply(id, protocol.NEGOTIATION_TYPE_REPLY_ACK, nil); err != nil {
		return nil, err
	}
	return exp, nil
}

// reply writes one option reply in a single Write.
func (h *handshake) reply(id, typ uint32, payload []byte) error {
	var err error
	h.out, err = binary.Append(h.out[:0], binary.BigEndian, protocol.NegotiationReplyHeader{
		ReplyMagic: protocol.NEGOTIATION_MAGIC_REPLY,
		ID:         id,
		Type:       typ,
		Length:     uint32(len(payload)),
	})
	if err != nil {
		return err
	}
	h.out = append(h.out, payload...)
	_, err = h.c.Write(h.out)
	return err
}
