"""genimage.py SEED BYTES OUT.tar: a layer tar holding one file,
/data/blob.bin, of BYTES pseudo-random but compressible bytes (each 4 KiB:
2 KiB random, then 2 KiB of a pattern fixed per SEED, so about 2:1 for
gzip and zstd). Different seeds give images that share no chunk. Fast
(about 3 s a GiB) and needs no disk beyond the tar itself.
"""
import io
import random
import sys
import tarfile


class Stream(io.RawIOBase):
    def __init__(self, seed, n):
        self.rnd = random.Random(seed)
        self.pattern = random.Random(seed ^ 0x5EED).randbytes(2048)
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left, 1 << 20)
        if n >= 4096:
            n -= n % 4096
        buf = bytearray()
        while len(buf) < n:
            buf += self.rnd.randbytes(2048)
            buf += self.pattern
        b[:n] = buf[:n]
        self.left -= n
        return n


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    seed, size, out = int(argv[1]), int(argv[2]), argv[3]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("data")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
        tf.addfile(d)
        ti = tarfile.TarInfo("data/blob.bin")
        ti.size, ti.mode, ti.mtime = size, 0o644, 0
        tf.addfile(ti, io.BufferedReader(Stream(seed, size), 1 << 20))


if __name__ == "__main__":
    main(sys.argv)
