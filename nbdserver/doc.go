// Package nbdserver speaks the NBD (Network Block Device) protocol, server
// side, for read-only exports. It does nothing else: what an export holds and
// how its bytes are fetched or cached is the Backend's business.
//
// Terms:
//   - An export is a named, read-only array of bytes of a fixed size, served
//     from a Backend. Exports are given to New or added and removed while
//     the server runs (Add, Remove). The first one still served is the
//     default export, the one a client gets by asking for the empty name.
//   - A block is the unit clients address: requests should be aligned to
//     MinimumBlockSize and are most efficient at PreferredBlockSize (the
//     4 KiB the kernel uses).
//   - A request is one transmission-phase command (READ, FLUSH, DISC, ...)
//     identified by the client's 64-bit cookie. Requests on one connection
//     are served concurrently and answered in whatever order they finish,
//     each with a simple reply; a failed read answers that request alone
//     with NBD_EIO and never drops the connection.
//
// Two entry points exist: Serve/ServeConn run the fixed newstyle handshake
// (for nbdinfo, nbdcopy, nbdfuse, qemu and friends) and then transmission;
// ServeTransmission skips the handshake for a socket that the kernel's nbd
// driver already owns (attached with netlink or ioctl).
//
// Memory is bounded by the buffer budget shared by all connections of a
// Server (WithBufferBudget); hostile clients can make requests wait, not make
// the server allocate more. The wire format follows
// https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md, with
// the constants and header structs of github.com/pojntfx/go-nbd/pkg/protocol.
package nbdserver
