"""coldread.py: the timed reads of bench/fio/run.sh's cold-cache phase.

  coldread.py offsets BLOCKS FRACTION SEED
      print round(BLOCKS*FRACTION) distinct 4 KiB block offsets (bytes),
      chosen at random with SEED, one per line, in the order to read them
  coldread.py index FILE
      print the chunk table of a sluice index blob (imageconv/FORMAT.md),
      one "INDEX DIGEST STORED_LENGTH BLOB_OFFSET" line per chunk; all-zero
      chunks are "INDEX zero 0 -1"
  coldread.py nbd URI
      read 4 KiB at each offset on stdin, one at a time (queue depth 1),
      and print "OFFSET MICROSECONDS" per read
  coldread.py pair URI BLOB_URL [DIRECT_URL [PEER_URI]]
      for each "OFFSET BLOB_OFFSET BLOB_LENGTH" on stdin (a block of a cold
      chunk and where that chunk is stored in the data blob): GET the
      chunk's bytes from BLOB_URL with a Range request over a kept-alive
      connection, and read the 4 KiB block from the NBD export, alternating
      which goes first; print "OFFSET BLOB_LENGTH NBD_US HTTP_US". The HTTP
      time is what the network and the registry cost without sluice, taken
      at the same moment, so the difference is sluice's own share. With
      DIRECT_URL (the same blob straight from the registry, no proxy), the
      same range is also fetched from there right after, and its time
      printed as a fifth column: the registry's own service time. With
      PEER_URI (an NBD export of the data blob itself served lazily by
      another server, nbdkit's curl plugin through the same proxy), the
      chunk's stored bytes are also read from it, in turn with the other
      two, and its time printed as a sixth column: a lazy NBD server that
      neither decompresses nor verifies.

Needs Debian's python3-libnbd for the nbd mode (run it with the python3
that has the nbd module: /usr/bin/python3).
"""
import http.client
import random
import struct
import sys
import time
import urllib.parse

BLOCK = 4096


def offsets(blocks, fraction, seed):
    n = max(1, round(blocks * fraction))
    for b in random.Random(seed).sample(range(blocks), n):
        print(b * BLOCK)


def index(path):
    with open(path, "rb") as f:
        b = f.read()
    magic, version, flags, _size, _chunk, count, _data = struct.unpack_from("<8sIIQQQQ", b, 0)
    if magic != b"SLUICEIX" or version != 1 or flags != 0 or len(b) != 64 + 48 * count:
        sys.exit(f"{path}: not a version 1 sluice index of {count} chunks")
    for i in range(count):
        at = 64 + 48 * i
        offset, length = struct.unpack_from("<QI", b, at + 32)
        if length == 0:
            print(i, "zero", 0, -1)
        else:
            print(i, "sha256:" + b[at : at + 32].hex(), length, offset)


def read_nbd(uri):
    import nbd

    h = nbd.NBD()
    h.connect_uri(uri)
    for line in sys.stdin:
        if not line.strip():
            continue
        off = int(line.split()[0])
        t0 = time.perf_counter_ns()
        h.pread(BLOCK, off)
        t1 = time.perf_counter_ns()
        print(off, (t1 - t0) // 1000, flush=True)
    h.shutdown()


def read_pairs(uri, url, direct_url=None, peer_uri=None):
    import nbd

    h = nbd.NBD()
    h.connect_uri(uri)
    peer = None
    if peer_uri:
        peer = nbd.NBD()
        peer.connect_uri(peer_uri)

    def connect(url):
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
        # Connection set-up is not part of a fetch: sluice keeps connections.
        conn.request("GET", "/v2/")
        conn.getresponse().read()
        return conn, u.path

    conns = {url: connect(url)}
    if direct_url:
        conns[direct_url] = connect(direct_url)

    def fetch(off, n, url=url):
        conn, path = conns[url]
        t0 = time.perf_counter_ns()
        conn.request("GET", path, headers={"Range": f"bytes={off}-{off + n - 1}"})
        resp = conn.getresponse()
        body = resp.read()
        t1 = time.perf_counter_ns()
        if resp.status != 206 or len(body) != n:
            sys.exit(f"GET {url} bytes {off}-{off + n - 1}: {resp.status}, {len(body)} bytes")
        return (t1 - t0) // 1000

    def read(off):
        t0 = time.perf_counter_ns()
        h.pread(BLOCK, off)
        return (time.perf_counter_ns() - t0) // 1000

    def read_peer(boff, blen):
        t0 = time.perf_counter_ns()
        peer.pread(blen, boff)
        return (time.perf_counter_ns() - t0) // 1000

    for k, line in enumerate(sys.stdin):
        if not line.strip():
            continue
        off, boff, blen = (int(x) for x in line.split()[:3])
        t = {}
        jobs = [
            ("nbd", lambda: read(off)),
            ("http", lambda: fetch(boff, blen)),
        ]
        if peer:
            jobs.append(("peer", lambda: read_peer(boff, blen)))
        # Each goes first in turn.
        for name, job in jobs[k % len(jobs):] + jobs[: k % len(jobs)]:
            t[name] = job()
        cols = [off, blen, t["nbd"], t["http"]]
        if direct_url:
            cols.append(fetch(boff, blen, direct_url))
        if peer:
            cols.append(t["peer"])
        print(*cols, flush=True)
    h.shutdown()
    if peer:
        peer.shutdown()


def main(argv):
    if len(argv) == 5 and argv[1] == "offsets":
        offsets(int(argv[2]), float(argv[3]), int(argv[4]))
    elif len(argv) == 3 and argv[1] == "index":
        index(argv[2])
    elif len(argv) == 3 and argv[1] == "nbd":
        read_nbd(argv[2])
    elif len(argv) in (4, 5, 6) and argv[1] == "pair":
        read_pairs(*argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
