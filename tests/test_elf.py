"""The linker of native objects (``bce_cli._elf``): the code it places runs the same
bits as numba's own and as LLVM's loader's; what it does not link is left to LLVM,
what is not whole is refused."""

import platform
import struct

import numpy as np
import pytest

from bce_cli import _elf, _launch, _native, kernels
from bce_cli._forms import Form, planes_geometry, rows_geometry

pytestmark = pytest.mark.skipif(
    not _native.supported() or platform.machine() != "x86_64",
    reason="the linker links x86-64 ELF objects (Linux)")

CASES = [(Form("planes", 2, 32), "float32-uint8-float32-float32"),   # a weight per element
         (Form("rows", 3, 64), "float64-float64-float64-float64")]   # any weights and pos_weight


def _compute(form, sig, address, monkeypatch):
    """Per-element losses and per-task partials of the entry point at ``address``."""
    monkeypatch.setitem(_launch._entries, (form, sig), (_launch._PROTOTYPE(address), "loaded"))
    dtype = np.float32 if form.bits == 32 else np.float64
    rng = np.random.default_rng(form.bits + form.loop)
    shape = (4001, 5)
    x = (rng.standard_normal(shape) * 6).astype(dtype).reshape(-1)
    y = (rng.random(shape) < 0.3).astype(np.uint8 if "uint8" in sig else dtype).reshape(-1)
    factors = rng.random(x.size).astype(dtype)
    if form.kernel == "rows":
        (geom, n_tasks), c = rows_geometry(*shape), shape[1]
    else:
        (geom, n_tasks), c = planes_geometry(1, 1, x.size), 1
    out = np.zeros(x.size, dtype=dtype)
    partials, n_bad = _launch.run(form, geom, n_tasks, x, y, np.ones(c), np.full(c, 2.0),
                                  factors, factors, 0.0, 0.0, False, 0, out, True, np.zeros(0))
    assert out.any() and partials.any() and not n_bad.any()
    return out.tobytes(), partials.tobytes()


@pytest.mark.parametrize("form, sig", CASES)
def test_linked_code_runs_the_same_bits_as_numbas_and_llvms(form, sig, monkeypatch):
    symbol, numba_address, obj = kernels.compile_native(form, sig)
    linked = _elf.link_x86_64(obj, symbol, _native._externals())
    by_llvm = _native._load_with_llvm(obj, symbol)
    assert len({linked, by_llvm, numba_address}) == 3  # three copies of the code
    expected = _compute(form, sig, numba_address, monkeypatch)
    assert _compute(form, sig, linked, monkeypatch) == expected
    assert _compute(form, sig, by_llvm, monkeypatch) == expected


def _with_section_field(obj, name, field, value):
    """``obj`` with section ``name``'s header field ``field`` ("type" or "flags") set."""
    _, table = _elf.sections(obj)
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, = struct.unpack_from("<H", obj, 0x3A)
    out = bytearray(obj)
    i = next(i for i, s in enumerate(table) if s.name == name)
    fmt, at = {"type": ("<I", 4), "flags": ("<Q", 8)}[field]
    struct.pack_into(fmt, out, shoff + i * shentsize + at, value)
    return bytes(out)


def _with_first_relocation(obj, kind):
    _, table = _elf.sections(obj)
    rela = next(s for s in table if s.type == _elf.SHT_RELA and s.name == b".rela.ltext")
    out = bytearray(obj)
    r_info, = struct.unpack_from("<Q", obj, rela.offset + 8)
    struct.pack_into("<Q", out, rela.offset + 8, (r_info >> 32 << 32) | kind)
    return bytes(out)


def test_what_the_linker_does_not_link_is_refused_or_left_to_llvm(monkeypatch):
    form, sig = CASES[0]
    symbol, numba_address, obj = kernels.compile_native(form, sig)
    externals = _native._externals()
    not_linked = {
        "another machine": obj[:0x12] + struct.pack("<H", 183) + obj[0x14:],  # AArch64
        "writable data": _with_section_field(obj, b".ltext", "flags",
                                             _elf.SHF_ALLOC | _elf.SHF_EXECINSTR | _elf.SHF_WRITE),
        "an unknown relocation": _with_first_relocation(obj, 10),  # R_X86_64_32
        "REL relocations": _with_section_field(obj, b".rela.ltext", "type", _elf.SHT_REL),
        "zero-filled data": _with_section_field(obj, b".rodata.cst8", "type", _elf.SHT_NOBITS),
    }
    for bad in not_linked.values():
        with pytest.raises(_elf.Unsupported):
            _elf.link_x86_64(bad, symbol, externals)
    with pytest.raises(_elf.Unsupported, match="memset"):
        _elf.link_x86_64(obj, symbol, {k: v for k, v in externals.items() if k != "memset"})
    with pytest.raises(_elf.Unsupported, match="no code"):
        _elf.link_x86_64(obj, "no_such_symbol", externals)
    shared_object = obj[:0x10] + struct.pack("<H", 3) + obj[0x12:]  # ET_DYN
    for damaged in (obj[:100], obj[: len(obj) // 2], shared_object):
        with pytest.raises((ValueError, IndexError, struct.error)):
            _elf.link_x86_64(damaged, symbol, externals)

    # An object the linker refuses is loaded by LLVM, and runs the same bits.
    def refuse(*args):
        raise _elf.Unsupported("test")

    monkeypatch.setattr(_elf, "link_x86_64", refuse)
    engines = len(_native._engines)
    by_llvm = _native.load_object(obj, symbol)
    assert by_llvm and len(_native._engines) == engines + 1
    assert (_compute(form, sig, by_llvm, monkeypatch)
            == _compute(form, sig, numba_address, monkeypatch))
