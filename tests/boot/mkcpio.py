#!/usr/bin/env python3
"""Writes DIR as a gzip-compressed newc cpio archive (an initramfs) to OUT.

Used by tests/boot/run.sh for the small initramfs of the rootfs build's only boot, so
that the host needs neither cpio nor root-owned files: every entry is written as owned by
root. Regular files, directories and symbolic links only.

usage: mkcpio.py DIR OUT
"""

import gzip
import os
import stat
import sys


def header(ino, mode, nlink, size, name):
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08x" % f for f in fields) + name + b"\0"


def pad(n):
    return b"\0" * ((4 - n % 4) % 4)


def main():
    src, out = sys.argv[1], sys.argv[2]
    entries = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel = os.path.relpath(root, src)
        if rel != ".":
            entries.append(rel)
        for f in sorted(files):
            entries.append(os.path.normpath(os.path.join(rel, f)))
    blob = bytearray()
    for ino, rel in enumerate(entries, start=1):
        path = os.path.join(src, rel)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            data = os.readlink(path).encode()
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as fh:
                data = fh.read()
        elif stat.S_ISDIR(st.st_mode):
            data = b""
        else:
            sys.exit(f"mkcpio: {path}: only files, directories and symlinks")
        name = rel.encode()
        nlink = 2 if stat.S_ISDIR(st.st_mode) else 1
        h = header(ino, st.st_mode, nlink, len(data), name)
        blob += h + pad(len(h)) + data + pad(len(data))
    h = header(0, 0, 1, 0, b"TRAILER!!!")
    blob += h + pad(len(h))
    with gzip.open(out, "wb", compresslevel=6) as fh:
        fh.write(bytes(blob))


if __name__ == "__main__":
    main()
