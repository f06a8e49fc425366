"""Reference implementations, each run as its own process by run.py.

    python bench/refs.py xet PATH...   # hf_xet.hash_files(files) (Xet's Rust chunk + hash); a folder = its files
    python bench/refs.py cdc PATH      # Python loop: pyfastcdc (avg 64 KiB) + blake3 per chunk
    python bench/refs.py floor PATH    # read in 16 MiB blocks + one blake3 with all threads

run.py times the whole command (interpreter start-up included, as for
`dstore add`); the line printed here adds the in-process time of the work
alone, for reference.
"""

from __future__ import annotations

import json
import os
import sys
import time


def files_under(paths: list[str]) -> list[str]:
    """The paths, each folder replaced by every file below it (sorted walk)."""
    out = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        for root, dirs, names in os.walk(path):
            dirs.sort()
            out += [os.path.join(root, n) for n in sorted(names)]
    return out


def xet(*paths: str) -> dict:
    import hf_xet

    infos = hf_xet.hash_files(files_under(list(paths)))
    out = {"files": len(infos), "bytes": sum(i.file_size for i in infos)}
    if len(infos) == 1:
        out["hash"] = infos[0].hash
    return out


def cdc(path: str) -> dict:
    import blake3
    import pyfastcdc

    # The same parameters as dstore's chunker (min 16 KiB, avg 64 KiB, max
    # 256 KiB, normalized chunking level 2); pyfastcdc's gear table differs.
    chunker = pyfastcdc.FastCDC(65536, min_size=16384, max_size=262144, normalized_chunking=2)
    n = total = 0
    for chunk in chunker.cut_file(path):
        blake3.blake3(chunk.data).digest()
        n += 1
        total += chunk.length
    return {"chunks": n, "bytes": total}


def floor(path: str) -> dict:
    import blake3

    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(view):
            h.update(view[:k])
            total += k
    return {"hash": h.hexdigest(), "bytes": total}


def main() -> None:
    what, paths = sys.argv[1], sys.argv[2:]
    fn = {"xet": xet, "cdc": cdc, "floor": floor}[what]
    t0 = time.perf_counter()
    out = fn(*paths)
    out["inner_s"] = time.perf_counter() - t0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
