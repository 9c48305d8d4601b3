"""Bit counting for the backtest kernels' pair masks (numba intrinsics over ``llvm.ctpop`` and
``llvm.cttz``: one instruction each on x86-64 with POPCNT/BMI, a short sequence otherwise).

The records-off bar loop keeps the pairs it must visit as 64-bit words (bit ``j % 64`` of word
``j // 64`` is pair ``j``): the held pairs, and per bar the entry candidates by the outcome of their
per-pair checks (``engine.backtest.nb.entry_masks_nb``). ``popcount_nb`` counts a word's pairs (a
refusal count is the popcount of a candidate mask and the flat pairs); ``ctz_nb`` finds the lowest
pair of a word, so ``while w: j = ctz_nb(w); w &= w - 1`` visits the set pairs in column order."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def _unary_u64(name):
    @intrinsic
    def _op(typingctx, x):
        if x != types.uint64:
            return None
        sig = types.uint64(types.uint64)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            if name == "llvm.ctpop.i64":
                fnty = ir.FunctionType(i64, [i64])
                return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), [args[0]])
            fnty = ir.FunctionType(i64, [i64, ir.IntType(1)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, name)
            return builder.call(fn, [args[0], ir.IntType(1)(0)])  # 0 -> 64, defined

        return sig, codegen

    return _op


_ctpop = _unary_u64("llvm.ctpop.i64")
_cttz = _unary_u64("llvm.cttz.i64")


@njit(cache=True, inline="always")
def popcount_nb(x):
    """The number of set bits of the uint64 ``x`` (an int64)."""
    return np.int64(_ctpop(x))


@njit(cache=True, inline="always")
def ctz_nb(x):
    """The index of the lowest set bit of the uint64 ``x`` (an int64; 64 for 0)."""
    return np.int64(_cttz(x))
