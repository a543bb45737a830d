"""Reading and linking the ELF objects numba writes for the kernels' entry points.

An entry point's object (``bce_cli._native``) is small and simple: numba compiles
for x86-64 with the large code model, so its code and constants refer to each
other and to the few libc functions it calls only through 64-bit absolute
addresses (``R_X86_64_64``).  Placing such an object in memory and patching those
addresses is the whole of a linker's work here; done in this module, it takes a
fraction of a millisecond and no library, where loading LLVM's (llvmlite's MCJIT)
costs a process 0.04 s and 50 MB.  An object with anything else in it (another
architecture, writable or thread-local data, another relocation) raises
``Unsupported`` and is left to LLVM.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from typing import NamedTuple

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_TLS = 0x1, 0x2, 0x4, 0x400
SHT_SYMTAB, SHT_RELA, SHT_NOBITS, SHT_REL, SHT_RELR, SHT_CREL = 2, 4, 8, 9, 19, 0x40000014
ET_REL = 1
SHN_UNDEF, SHN_ABS, SHN_LORESERVE = 0, 0xFFF1, 0xFF00
EM_X86_64 = 62
# Relocations: type -> (size in bytes, relative to the place patched).
X86_64_RELOCATIONS = {1: (8, False),   # R_X86_64_64: S + A
                      24: (8, True),   # R_X86_64_PC64: S + A - P
                      2: (4, True),    # R_X86_64_PC32
                      4: (4, True)}    # R_X86_64_PLT32 (no stub: the target must be near)
UNWIND_SECTIONS = (b".eh_frame",)  # nothing unwinds through an entry point: not loaded
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
PAGE = 4096


# What reading a damaged object raises (a size of 0, an offset past the end...).
NOT_WHOLE = (ValueError, IndexError, ZeroDivisionError, OverflowError, struct.error,
             UnicodeDecodeError)


class Unsupported(Exception):
    """An object this module does not link (LLVM's loader may)."""


class Section(NamedTuple):
    name: bytes
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    entsize: int


class Symbol(NamedTuple):
    name: str
    value: int
    shndx: int


def sections(obj: bytes) -> tuple[int, list[Section]]:
    """The machine and the sections of 64-bit little-endian ELF object ``obj``
    (ValueError, struct.error or IndexError when it is not a whole one)."""
    if obj[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not a 64-bit little-endian ELF object")
    kind, machine = struct.unpack_from("<HH", obj, 0x10)
    if kind != ET_REL:
        raise ValueError("not a relocatable object")
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", obj, 0x3A)
    raw = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize) for i in range(shnum)]
    if any(s[1] != SHT_NOBITS and s[4] + s[5] > len(obj) for s in raw):
        raise ValueError("a section runs past the end of the object")
    names_at = raw[shstrndx][4]
    return machine, [Section(obj[names_at + s[0]:obj.index(b"\0", names_at + s[0])], s[1], s[2],
                             s[4], s[5], s[6], s[7], s[8], s[9]) for s in raw]


def symbols(obj: bytes, table: list[Section]) -> list[Symbol]:
    """The symbol table's entries, in order (index 0 included)."""
    for sec in table:
        if sec.type != SHT_SYMTAB:
            continue
        names_at = table[sec.link].offset
        out = []
        for i in range(sec.size // sec.entsize):  # an entry size of 0: ZeroDivisionError
            st_name, _, _, shndx, value = struct.unpack_from("<IBBHQ", obj,
                                                             sec.offset + i * sec.entsize)
            name = obj[names_at + st_name:obj.index(b"\0", names_at + st_name)].decode()
            out.append(Symbol(name, value, shndx))
        return out
    return []


def undefined_symbols(obj: bytes) -> set[str]:
    """The undefined symbols of a 64-bit little-endian ELF relocatable object."""
    _, table = sections(obj)
    return {s.name for s in symbols(obj, table) if s.shndx == SHN_UNDEF and s.name}


@functools.cache
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return libc


def link_x86_64(obj: bytes, symbol: str, externals: dict[str, int]) -> int:
    """Place x86-64 object ``obj`` in executable memory, resolve its relocations
    (undefined symbols from ``externals``: name -> address) and return the address
    of ``symbol``.  Raises Unsupported for an object outside what this module
    links, ValueError (or struct.error, IndexError) for one that is not whole."""
    machine, table = sections(obj)
    if machine != EM_X86_64:
        raise Unsupported(f"machine {machine}")
    loaded = [i for i, s in enumerate(table)
              if s.flags & SHF_ALLOC and s.size and s.name not in UNWIND_SECTIONS]
    if any(table[i].flags & (SHF_WRITE | SHF_TLS) or table[i].type == SHT_NOBITS
           or table[i].align > PAGE for i in loaded):
        raise Unsupported("writable, thread-local or zero-filled data, or page-aligned sections")
    if any(s.type in (SHT_REL, SHT_RELR, SHT_CREL) and s.info in loaded for s in table):
        raise Unsupported("relocations other than RELA")
    # Code first, then read-only data from a fresh page, so each part gets its own rights.
    place, end = {}, 0
    for part in (True, False):
        end = -(-end // PAGE) * PAGE
        for i in loaded:
            if bool(table[i].flags & SHF_EXECINSTR) == part:
                align = max(table[i].align, 1)
                place[i] = end = -(-end // align) * align
                end += table[i].size
    code_size = -(-max([place[i] + table[i].size for i in loaded
                        if table[i].flags & SHF_EXECINSTR] or [0]) // PAGE) * PAGE
    size = max(-(-end // PAGE) * PAGE, PAGE)
    if size > len(obj) + len(loaded) * PAGE + 2 * PAGE:
        raise ValueError("sections larger than the object")
    libc = _libc()
    base = libc.mmap(None, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if base is None or base == ctypes.c_void_p(-1).value:
        raise Unsupported("no memory for the object")
    try:
        image = (ctypes.c_char * size).from_address(base)
        for i in loaded:
            if table[i].type != SHT_NOBITS:
                image[place[i]:place[i] + table[i].size] = \
                    obj[table[i].offset:table[i].offset + table[i].size]
        syms = symbols(obj, table)

        def address(sym: Symbol) -> int:
            if sym.shndx == SHN_UNDEF:
                if sym.name not in externals:
                    raise Unsupported(f"undefined symbol {sym.name!r}")
                return externals[sym.name]
            if sym.shndx == SHN_ABS:
                return sym.value
            if sym.shndx >= SHN_LORESERVE or sym.shndx not in place:
                raise Unsupported(f"symbol {sym.name!r} in a section not loaded")
            if sym.value > table[sym.shndx].size:
                raise ValueError(f"symbol {sym.name!r} lies outside its section")
            return base + place[sym.shndx] + sym.value

        for rela in table:
            if rela.type != SHT_RELA or rela.info not in place:
                continue  # relocations of a section not loaded (unwind tables)
            target = table[rela.info]
            for k in range(rela.size // rela.entsize):
                r_offset, r_info, addend = struct.unpack_from("<QQq", obj,
                                                              rela.offset + k * rela.entsize)
                kind = r_info & 0xFFFFFFFF
                if kind not in X86_64_RELOCATIONS:
                    raise Unsupported(f"relocation type {kind}")
                width, relative = X86_64_RELOCATIONS[kind]
                if r_offset + width > target.size:
                    raise ValueError("a relocation outside its section")
                at = place[rela.info] + r_offset
                value = address(syms[r_info >> 32]) + addend - (base + at if relative else 0)
                if width == 4:
                    if not -2**31 <= value < 2**31:
                        raise Unsupported("a 32-bit relocation out of range")
                    struct.pack_into("<i", image, at, value)
                else:
                    struct.pack_into("<Q", image, at, value & 0xFFFFFFFFFFFFFFFF)
        entry = next((s for s in syms if s.name == symbol and s.shndx in place), None)
        if entry is None or not table[entry.shndx].flags & SHF_EXECINSTR:
            raise Unsupported(f"no code for {symbol!r}")
        if entry.value >= table[entry.shndx].size:
            raise ValueError(f"{symbol!r} lies outside its section")
        if (libc.mprotect(base, code_size, PROT_READ | PROT_EXEC) != 0
                or (size > code_size and libc.mprotect(base + code_size, size - code_size,
                                                       PROT_READ) != 0)):
            raise Unsupported(f"memory cannot be made executable (errno {ctypes.get_errno()})")
    except BaseException:
        libc.munmap(base, size)
        raise
    return base + place[entry.shndx] + entry.value
