package nbdserver

import "errors"

var (
	// ErrBadMagic means the client sent a header with the wrong magic
	// number; the connection is closed because the stream cannot be trusted.
	ErrBadMagic = errors.New("nbd: bad magic")
	// ErrClientFlags means the client set handshake flags the server did not
	// offer; the protocol requires closing the connection.
	ErrClientFlags = errors.New("nbd: unsupported client flags")
	// ErrUnknownExport means the named export does not exist.
	ErrUnknownExport = errors.New("nbd: unknown export")
)
