"""The one place that holds the JIT options of every kernel, and where kernels are cached.

Never blanket ``fastmath=True``: it implies ``nnan``/``ninf`` and folds
``np.isnan`` to False.  ``ELEMENT_FLAGS`` lets LLVM contract multiply-adds and
vectorise branch-free code while keeping NaN and inf semantics; ``SUM_FLAGS``
adds ``reassoc`` for loops whose only job is a float64 sum (reassociation
would silently delete compensation terms in element math, so it never goes
there).

Caching: each kernel form (``bce_cli._forms``) is compiled on first use and
saved as ``kernels.<form>.pyXY.nbi`` (numba's index), data files and a
``.stamp`` file, in the first of these directories (``bce_cli._cache_dirs``)
that holds the form compiled from the current sources or can be written:
``$NUMBA_CACHE_DIR/bce_cli``, the package's ``__pycache__``, ``~/.cache/bce``.
A directory that cannot be written (a CI cache restored read-only, a Docker
layer) is still read.  The stamp is a hash of every source that ends up in the
kernels, so an edit to any of them, not only to ``kernels.py``, invalidates it,
followed by the CPUs the form was compiled for (``_cache_dirs.cpu_key``): numba
loads only code compiled for this CPU, so a cache built on another counts as empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import types
import warnings

import llvmlite.binding as llvm
import numba
from numba.core import caching
from numba.core import types as nbt
from numba.core.compiler import Compiler
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from . import _tiers
from ._cache_dirs import cache_dirs, holds, index_name, source_stamp, stamp_name, stamp_text

# Modules numba's CPU target imports as it starts, for code no bce kernel has, with
# what they cost (2-core development machine): the module numba imports, the one hidden.
_PROBES = {
    # scipy.linalg (where SciPy is installed), only to learn whether np.dot-based inner
    # products may call BLAS: 0.1 s; without it numba takes its own loop for those
    "numba.np.arraymath": "scipy.linalg",
    # cffi's parser (where cffi is installed), for calling cffi functions: 0.015 s
    "numba.core.typing.cffi_utils": "cffi",
}


def _start_without_probes() -> None:
    """In the ``bce`` command's own process, start numba's CPU target without the probes
    of ``_PROBES``: each module is imported with its probe hidden (an import of it
    then fails, as if it were not installed), and the probe imports normally after.
    A library caller's process keeps numba's own start (its numba code may want
    BLAS or cffi)."""
    if not _tiers.own_process:
        return
    for module, probe in _PROBES.items():
        if module in sys.modules or probe in sys.modules:
            continue
        sys.modules[probe] = None  # import halted: ImportError
        try:
            __import__(module)
        finally:
            if sys.modules.get(probe, 0) is None:
                del sys.modules[probe]


_start_without_probes()

ELEMENT_FLAGS = frozenset({"nsz", "arcp", "contract"})
SUM_FLAGS = ELEMENT_FLAGS | {"reassoc"}

_cache_warned = False


def inline():
    """Decorator for thin element wrappers, inlined into their caller by numba.

    The body takes the caller's flags, so it must hold no compensated
    arithmetic (that lives in ``scalar`` functions, which it may call).
    Inlining at numba level keeps LLVM's call depth short enough for its own
    inliner to pull the ``scalar`` leaves into the loop and vectorise it.
    """
    return numba.njit(inline="always", error_model="numpy")


def inline_copy(dispatcher):
    """An ``inline="always"`` copy of a ``scalar`` function, for callers compiled with
    the function's own flags: numba inlines the body there (taking those flags), so the
    loop vectorises without relying on LLVM's inliner, and the code is the caller's
    own (a call to a separate function may run another compile of it, see
    ``bce_cli.kernels``).  Never call a copy of an ELEMENT_FLAGS function from a loop
    with ``reassoc``."""
    return numba.njit(inline="always", error_model="numpy")(dispatcher.py_func)


# Vectors per iteration of an element loop's vector body (``scalar(interleave=True)``).
INTERLEAVE = 4
_interleaving = 0  # depth of _Interleaved compiles under way (numba's compiler lock is held)


def _set_interleave(count: int) -> None:
    llvm.set_option("", f"-force-vector-interleave={count}")  # 0: LLVM's own choice


class _Interleaved(Compiler):
    """numba's compiler, with LLVM's loop vectoriser told to interleave ``INTERLEAVE``
    vectors per iteration of every loop of the function being compiled.

    An element loop (a loss per element, each a long chain of dependent multiply-adds,
    nothing carried across the loop) runs a vector at a time, and the out-of-order
    window of a core holds few iterations: with 256-bit vectors the loop waits on its
    own latency (its operations take half the time of 512-bit ones on the same
    pipes).  LLVM interleaves only loops that carry a reduction, or small ones; forced
    to 4, the loss loops of the planes kernel ran 31% faster (float32) and 33% faster
    (float64) with AVX2 code, 5% and 21% with AVX-512 code (one thread, a 1024-element
    block in L1, Zen 4).  The results are the same bits: each element's operations are
    the same in the vector body and in the scalar remainder, only which elements each
    one takes changes (``tests/test_jit.py`` checks the kernels' interleaved loops
    against plain compiles of the same code).

    LLVM's option is process-wide: it is set for this compile only (the compile runs
    and optimises this function's module under numba's compiler lock, which every
    numba compile takes) and put back to 0, LLVM's default, when it ends, also on an
    error (a value a caller of bce set is overwritten: llvmlite cannot read it back).
    Not for loops that sum under ``reassoc``: their order of additions would change.
    That holds for the code the function calls too: a function it calls by symbol is
    compiled (nested) under the same option when this compile is its first, and linked
    into the module the option optimises.  So an interleaved function inlines its loops'
    code (``inline``, ``inline_copy``) and calls by symbol only loop-free element math
    (``bce_cli._fastmath``'s leaves).
    """

    def _compile_core(self):
        global _interleaving
        if not _interleaving:
            _set_interleave(INTERLEAVE)
        _interleaving += 1
        try:
            return super()._compile_core()
        finally:
            _interleaving -= 1
            if not _interleaving:
                _set_interleave(0)


def scalar(flags=ELEMENT_FLAGS, *, python: bool = False, interleave: bool = False):
    """Decorator for scalar element math and serial loops called from the kernels.

    Without ``python`` the function is callable from compiled code only: numba
    then builds no CPython or C wrapper for it, a sizeable share of a compile.
    ``interleave``: a loop of element math with no sum across it, whose vector
    body runs ``INTERLEAVE`` vectors at a time (:class:`_Interleaved`).

    A plain call, not numba's ``inline="always"``: numba-level inlining would
    compile the body with the caller's flags, and a summing kernel's
    ``reassoc`` deletes compensation terms.  LLVM still inlines the call (each
    instruction keeps its own flags) and the caller's loop still vectorises.
    """
    if interleave and "reassoc" in flags:
        raise ValueError("an interleaved loop must not sum under reassoc")
    return numba.njit(error_model="numpy", nogil=True, fastmath=set(flags),
                      no_cpython_wrapper=not python, no_cfunc_wrapper=True,
                      **({"pipeline_class": _Interleaved} if interleave else {}))


def _extents(context, builder, ty, value):
    """The intp values of an integer or a tuple of integers."""
    if isinstance(ty, nbt.Integer):
        return [context.cast(builder, value, ty, nbt.intp)]
    return [context.cast(builder, builder.extract_value(value, i), t, nbt.intp)
            for i, t in enumerate(ty)]


@intrinsic
def view(typingctx, ptr, shape):
    """``numba.carray(ptr, shape)`` in a few instructions: a C-contiguous array of
    ``shape`` (an integer or a tuple of them) over the memory at ``ptr``, owned by no
    one (nothing counted or freed) and unchecked.  ``carray`` wraps the same
    construction in a compiled overload of its own: more code in every form to type,
    optimise and emit."""
    if not isinstance(ptr, nbt.CPointer):
        return None
    if isinstance(shape, nbt.Integer):
        ndim = 1
    elif isinstance(shape, nbt.BaseTuple) and all(isinstance(t, nbt.Integer) for t in shape):
        ndim = len(shape)
    else:
        return None
    arrty = nbt.Array(ptr.dtype, ndim, "C")

    def codegen(context, builder, sig, args):
        extents = _extents(context, builder, sig.args[1], args[1])
        itemsize = context.get_abi_sizeof(context.get_data_type(arrty.dtype))
        strides = [None] * ndim
        step = context.get_constant(nbt.intp, itemsize)
        for i in reversed(range(ndim)):
            strides[i] = step
            step = builder.mul(step, extents[i])
        ary = make_array(arrty)(context, builder)
        populate_array(ary, data=args[0], shape=extents, strides=strides, itemsize=itemsize,
                       meminfo=None)
        return ary._getvalue()

    return arrty(ptr, shape), codegen


@intrinsic
def span(typingctx, arr, start, count):
    """``arr[start:start + count]`` of a 1-D C-contiguous array in a few instructions,
    unchecked: the caller keeps it in range.  A slice's code clips its bounds and
    handles negative ones and steps: with ``carray``, a third of the instructions of a
    planes form's task before LLVM optimised them."""
    if not (isinstance(arr, nbt.Array) and arr.ndim == 1 and arr.layout == "C"
            and isinstance(start, nbt.Integer) and isinstance(count, nbt.Integer)):
        return None

    def codegen(context, builder, sig, args):
        src = make_array(arr)(context, builder, args[0])
        lo = context.cast(builder, args[1], sig.args[1], nbt.intp)
        n = context.cast(builder, args[2], sig.args[2], nbt.intp)
        itemsize = context.get_abi_sizeof(context.get_data_type(arr.dtype))
        ary = make_array(arr)(context, builder)
        populate_array(ary, data=builder.gep(src.data, [lo]), shape=[n],
                       strides=[context.get_constant(nbt.intp, itemsize)],
                       itemsize=itemsize, meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, arr, ary._getvalue())

    return arr(arr, start, count), codegen


def retarget(fn, namespace: dict, decorate):
    """``fn``'s Python source compiled by another target: a function with the code of
    ``fn`` (a numba dispatcher or a plain function) whose globals are
    ``namespace``, decorated with ``decorate`` (say ``cuda.jit(device=True)``).
    One formula for every target: a caller swaps only the helpers it names in
    ``namespace`` (the CUDA kernels swap the bit-cast of ``bce_cli._fastmath``)."""
    py = getattr(fn, "py_func", fn)
    copy = types.FunctionType(py.__code__, namespace, py.__name__, py.__defaults__,
                              py.__closure__)
    copy.__qualname__ = py.__qualname__
    copy.__doc__ = py.__doc__
    return decorate(copy)


class _Locator(caching._CacheLocator):
    """One directory of ``cache_dirs``; it may be read-only."""

    def __init__(self, py_file, path, writable):
        self._py_file = py_file
        self._path = path
        self._writable = writable

    def ensure_cache_path(self):
        if not self._writable:
            raise PermissionError(f"{self._path} is read-only here")
        super().ensure_cache_path()

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return source_stamp()

    def get_disambiguator(self):
        return ""

    @classmethod
    def for_form(cls, name, py_file, held=None):
        """The first directory that holds this form compiled from the current sources
        (it may be read-only) or can be written.  A read-only directory with a stale
        entry is passed over, so that the form is saved where it can be.  ``held(path,
        name)`` says whether a directory holds it (the CUDA kernels have their own)."""
        held = held or holds
        for path in cache_dirs():
            writable = os.access(path, os.W_OK)
            if held(path, name):
                return cls(py_file, path, writable)
            if os.path.isdir(path) and not writable:
                continue
            locator = cls(py_file, path, True)
            try:
                locator.ensure_cache_path()
            except OSError:
                continue
            return locator
        return None


class _FormCacheImpl(caching.CompileResultCacheImpl):
    def __init__(self, py_func):  # numba's looks for a locator by the source file
        self._lineno = py_func.__code__.co_firstlineno
        self._locator = py_func._bce_locator
        self._filename_base = index_name(py_func._bce_form)[: -len(".nbi")]


class _FormCache(caching.FunctionCache):
    """numba's function cache, keyed by the form's name instead of by pickled
    closure contents (closures hold dispatchers, whose pickles differ in every
    process), and never failing a compile when the directory is read-only."""

    _impl_class = _FormCacheImpl

    def _index_key(self, sig, codegen):
        code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
        return sig, codegen.magic_tuple(), (code, self._py_func._bce_form)

    def save_overload(self, sig, data):
        path = self._cache_path
        try:
            os.makedirs(path, exist_ok=True)
            with _locked(path):  # numba's index update is read-modify-write
                super().save_overload(sig, data)
                stamp = os.path.join(path, stamp_name(self._py_func._bce_form))
                try:
                    with open(stamp, encoding="ascii") as fh:
                        previous = fh.read()
                except (OSError, ValueError):
                    previous = None
                tmp = f"{stamp}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="ascii") as fh:
                    fh.write(stamp_text(previous))
                os.replace(tmp, stamp)
        except OSError:  # read-only (a restored cache) or full: the kernel still runs
            pass


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on ``path``'s ``.lock`` file: two processes saving forms into
    one cache (parallel CI jobs after ``bce warmup``) would otherwise interleave
    numba's index updates and leave an entry pointing at another signature's data."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(os.path.join(path, ".bce.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def form_kernel(name: str, *, parallel: bool, flags=ELEMENT_FLAGS, wrapper: bool = True,
                cache: bool = True):
    """Decorator for the compiled entry point of one kernel form, cached as ``name`` in
    numba's cache (unless ``cache`` is false: the pointer entry points are saved as
    native objects instead, ``bce_cli._native``).  ``wrapper``: callable from Python
    (else from compiled code, or by address)."""

    def decorate(fn):
        fn.__qualname__ = fn.__name__ = name.replace(".", "_").replace("-", "_")
        fn._bce_form = name
        disp = numba.njit(parallel=parallel, nogil=True, error_model="numpy",
                          fastmath=set(flags), no_cfunc_wrapper=True,
                          no_cpython_wrapper=not wrapper)(fn)
        if not cache:
            return disp
        locator = _Locator.for_form(name, fn.__code__.co_filename)
        if locator is None:
            warn_no_cache()
            return disp
        fn._bce_locator = locator
        disp._cache = _FormCache(fn)
        return disp

    return decorate


def compile_entry(disp, signature):
    """Compile a pointer entry point (``form_kernel(..., wrapper=False)``) for
    ``signature``: ``(symbol, address, object code)``; the object is None when it
    cannot be saved (numba's cache then keeps the form)."""
    disp.compile(signature.args)
    cres = disp.overloads[signature.args]
    library = cres.library
    symbol = cres.fndesc.llvm_func_name
    address = library.get_pointer_to_function(symbol)
    obj = None
    if not library._dynamic_globals:
        try:
            obj = library._get_compiled_object()
        except (RuntimeError, ValueError):  # loaded from numba's cache: consumed there
            obj = None
    return symbol, address, obj


def warn_no_cache() -> None:
    """Say once per process that compiled kernels cannot be kept."""
    global _cache_warned
    if not _cache_warned:
        _cache_warned = True
        warnings.warn("bce: no writable cache directory for compiled kernels, so they "
                      "are compiled anew in each process (set NUMBA_CACHE_DIR to a "
                      "writable directory to keep them)", RuntimeWarning, stacklevel=3)
