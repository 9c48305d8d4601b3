"""A software prefetch hint for the backtest kernels (numba intrinsic over ``llvm.prefetch``).

The records-off bar loop reads some inputs only on the bars where something happens: the expected
return, ATR, tradable flag and cluster of a candidate (entries), the open, high, low and volume of a
bar with orders (execution), the ATR and spread of an exit. Read that sparsely, their rows are not
in any cache and a bar with work waits on several memory loads in a row (issue 19: in a perf profile
of 10 pairs x 45k bars trading throughout, the hottest instructions of the bar loop and of
entries_nb were those loads). ``prefetch_row_nb(a, i)`` asks the CPU to start
loading row ``i`` of a C-contiguous 2-D array (every cache line of it) without waiting for it. A
hint only: it reads nothing into the program, cannot fault (the caller passes an index inside the
array) and changes no result, only when memory is fetched."""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_LINE = 64  # bytes per cache line


@intrinsic
def _prefetch_nb(typingctx, arr, flat):
    """Prefetch the element at flat index ``flat`` of the C-contiguous array ``arr`` (read, high
    temporal locality, data cache)."""
    if not isinstance(arr, types.Array) or not isinstance(flat, types.Integer):
        return None
    sig = types.void(arr, flat)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.gep(ary.data, [idx])
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [i8p, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _itemsize_nb(typingctx, arr):
    """The byte size of ``arr``'s elements, as a compile-time constant."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        size = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        return context.get_constant(types.intp, size)

    return types.intp(arr), codegen


@njit(cache=True, inline="always")
def prefetch_row_nb(a, i) -> None:
    """Prefetch row ``i`` (0 <= i < a.shape[0]) of the C-contiguous 2-D array ``a``: one element per
    cache line from its first, and its last."""
    m = a.shape[1]
    if m == 0:
        return
    k = i * m
    end = k + m - 1
    step = _LINE // _itemsize_nb(a)  # type: ignore[call-arg]  # numba intrinsic: typingctx is not an argument
    while k < end:
        _prefetch_nb(a, k)
        k += step
    _prefetch_nb(a, end)
