#!/usr/bin/env python3
"""The benchmark image of tests/bench (issue 21): 2 GiB raw, 512 MiB of random data, 512 MiB of
OS binaries (ELF files of /usr/bin and /usr/lib, concatenated) and 1 GiB of holes, in 64 MiB
stripes (random, binaries, hole, hole, ...). Deterministic for a given machine (seeded random;
files in sorted order).

    make_image.py OUT            write OUT (a sparse file), unless it is already there
    make_image.py --change OUT PERCENT SEED
                                 overwrite 4 KiB in PERCENT % of the disk's 4 MiB chunks (chunks
                                 that hold data, spread evenly) with random bytes; prints the changed ranges as
                                 `OFFSET LENGTH` lines (what `godwit replicate --changed-ranges`
                                 reads)
    make_image.py --data IMAGE OUT
                                 write the allocated bytes of IMAGE alone to OUT (1 GiB): what
                                 godwit hashes, for a like-with-like reference
"""
import os
import random
import sys

MIB = 1 << 20
STRIPE = 64 * MIB
SIZE = 2048 * MIB
VERSION = "1"


def elf_corpus(limit):
    buf = bytearray()
    for root in ("/usr/bin", "/usr/lib"):
        for dirpath, dirs, names in os.walk(root):
            dirs.sort()
            for n in sorted(names):
                p = os.path.join(dirpath, n)
                try:
                    if os.path.islink(p) or not os.path.isfile(p):
                        continue
                    with open(p, "rb") as f:
                        b = f.read()
                except OSError:
                    continue
                if not b.startswith(b"\x7fELF"):
                    continue
                buf += b
                if len(buf) >= limit:
                    return bytes(buf[:limit])
    sys.exit(f"make_image: only {len(buf)} bytes of ELF binaries under /usr/bin and /usr/lib")


def data_stripes():
    """Offsets of the stripes that hold data, and what kind."""
    out = []
    for i in range(SIZE // STRIPE):
        kind = i % 4
        if kind == 0:
            out.append((i * STRIPE, "random"))
        elif kind == 1:
            out.append((i * STRIPE, "binaries"))
    return out


def make(out):
    try:
        if os.path.exists(out) and open(out + ".version").read() == VERSION:
            return
    except OSError:
        pass
    rng = random.Random(20260521)
    elf = elf_corpus(512 * MIB)
    pos = 0
    with open(out + ".tmp", "wb") as f:
        f.truncate(SIZE)
        for off, kind in data_stripes():
            f.seek(off)
            if kind == "random":
                for _ in range(STRIPE // MIB):
                    f.write(rng.randbytes(MIB))
            else:
                f.write(elf[pos:pos + STRIPE])
                pos += STRIPE
    os.replace(out + ".tmp", out)
    with open(out + ".version", "w") as v:
        v.write(VERSION)


def change(out, percent, seed):
    rng = random.Random(seed)
    chunk = 4 * MIB
    data_chunks = [off + k * chunk for off, _ in data_stripes() for k in range(STRIPE // chunk)]
    # PERCENT of the disk's chunks, each one a chunk that holds data.
    n = max(1, round(SIZE // chunk * percent / 100))
    step = len(data_chunks) / n
    with open(out, "r+b") as f:
        for j in range(n):
            c = data_chunks[int(j * step)]
            at = c + rng.randrange(0, chunk // 4096) * 4096
            f.seek(at)
            f.write(rng.randbytes(4096))
            print(at, 4096)


def data_only(image, out):
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(image):
        return
    with open(image, "rb") as f, open(out + ".tmp", "wb") as o:
        for off, _ in data_stripes():
            f.seek(off)
            o.write(f.read(STRIPE))
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    if sys.argv[1] == "--data":
        data_only(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--change":
        change(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
    else:
        make(sys.argv[1])
