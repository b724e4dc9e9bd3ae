#!/usr/bin/python3
"""Copies a shared library and sets DF_SYMBOLIC in the copy's DT_FLAGS (model/CMakeLists.txt).

Usage: elf_set_symbolic.py SOURCE.so DEST.so

Why: Debian's libsentencepiece embeds protobuf-lite 3.14 and exports its symbols. Loaded into a
process that also has libprotobuf 3.21 (LibTorch, gRPC), its own references to protobuf resolve to
3.21 (the global scope is searched first) and it crashes in its static initializers. DF_SYMBOLIC
(the runtime form of `ld -Bsymbolic`, System V gABI) makes the dynamic loader resolve the
library's references to symbols it defines itself inside the library first, and everything else
(libc, libstdc++, a sanitizer's malloc interceptors) in the normal order. That is exactly the
isolation the tokenizer needs, without dlopen(RTLD_DEEPBIND), which AddressSanitizer and
ThreadSanitizer refuse, and which also bound libc calls past the sanitizers' interceptors.

Only the DT_FLAGS word changes; the script fails when the library has no DT_FLAGS entry (it does
not grow the dynamic section) or is not a little-endian ELF64 file.
"""
import os
import struct
import sys

PT_DYNAMIC = 2
DT_NULL = 0
DT_FLAGS = 30
DF_SYMBOLIC = 0x2


def dynamic_flags_offset(data: bytes) -> int:
    """File offset of the d_val of DT_FLAGS in the PT_DYNAMIC segment."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    e_phoff, = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(e_phnum):
        ph = e_phoff + i * e_phentsize
        p_type, = struct.unpack_from("<I", data, ph)
        if p_type != PT_DYNAMIC:
            continue
        p_offset, = struct.unpack_from("<Q", data, ph + 0x08)
        p_filesz, = struct.unpack_from("<Q", data, ph + 0x20)
        for off in range(p_offset, p_offset + p_filesz, 16):
            d_tag, = struct.unpack_from("<q", data, off)
            if d_tag == DT_NULL:
                break
            if d_tag == DT_FLAGS:
                return off + 8
        raise ValueError("no DT_FLAGS entry in the dynamic section")
    raise ValueError("no PT_DYNAMIC segment (not a shared library?)")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    source, dest = sys.argv[1], sys.argv[2]
    with open(source, "rb") as f:
        data = bytearray(f.read())
    try:
        at = dynamic_flags_offset(data)
    except ValueError as e:
        print(f"{source}: {e}", file=sys.stderr)
        return 1
    flags, = struct.unpack_from("<Q", data, at)
    struct.pack_into("<Q", data, at, flags | DF_SYMBOLIC)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
