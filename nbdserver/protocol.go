package nbdserver

import "github.com/pojntfx/go-nbd/pkg/protocol"

// Size constraints advertised with NBD_INFO_BLOCK_SIZE.
const (
	// MinimumBlockSize is the smallest addressable unit clients are told to use.
	MinimumBlockSize = 512
	// PreferredBlockSize is the size at which reads are efficient.
	PreferredBlockSize = 4096
	// MaximumPayload is the largest READ length served; longer ones get EINVAL.
	MaximumPayload = 32 << 20
)

// maxOptionData bounds the data of one handshake option. Longer option data
// is skipped without being stored and answered NBD_REP_ERR_TOO_BIG. It holds
// the largest legal NBD_OPT_GO (a 4096-byte name plus info requests) with
// room to spare.
const maxOptionData = 16 << 10

// maxNameLength is the NBD limit on export names and descriptions.
const maxNameLength = 4096

// NBD values that go-nbd's protocol package does not define, named as in the
// NBD specification.
const (
	handshakeFlagNoZeroes = uint16(1 << 1) // NBD_FLAG_NO_ZEROES

	clientFlagFixedNewstyle = uint32(1 << 0) // NBD_FLAG_C_FIXED_NEWSTYLE
	clientFlagNoZeroes      = uint32(1 << 1) // NBD_FLAG_C_NO_ZEROES

	optExportName = uint32(1) // NBD_OPT_EXPORT_NAME

	repErrInvalid = uint32(1<<31 | 3) // NBD_REP_ERR_INVALID
	repErrTooBig  = uint32(1<<31 | 9) // NBD_REP_ERR_TOO_BIG

	transmissionFlagReadOnly  = uint16(1 << 1) // NBD_FLAG_READ_ONLY
	transmissionFlagSendFlush = uint16(1 << 2) // NBD_FLAG_SEND_FLUSH

	cmdFlush       = uint16(3) // NBD_CMD_FLUSH
	cmdTrim        = uint16(4) // NBD_CMD_TRIM
	cmdWriteZeroes = uint16(6) // NBD_CMD_WRITE_ZEROES

	errEIO = uint32(5) // NBD_EIO
)

// transmissionFlags are the same for every export: read-only, flush is a
// no-op, and with no server-side write cache any number of connections see
// the same bytes.
const transmissionFlags = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS |
	transmissionFlagReadOnly |
	transmissionFlagSendFlush |
	protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN

// Wire sizes of the headers, as binary.Size would report for the go-nbd
// structs.
const (
	optionHeaderSize  = 16 // protocol.NegotiationOptionHeader
	optionReplySize   = 20 // protocol.NegotiationReplyHeader
	requestHeaderSize = 28 // protocol.TransmissionRequestHeader
	simpleReplySize   = 16 // protocol.TransmissionReplyHeader
)
