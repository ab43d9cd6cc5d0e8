"""Vector intrinsics for the compiled metrics kernel: 64 database items per call, as LLVM vector IR.

numba's loop vectoriser leaves a block of 64 distances as 64 scalar popcounts and compares; written as LLVM
vector operations it becomes eight ``VPOPCNTQ``, a few shifts and one byte compare on an AVX-512 CPU, and
LLVM's generic lowering on any other (AVX2, NEON): no instruction set is named here, so every CPU numba
supports compiles it.

**Block-transposed codes.** A block of 64 items is stored so that position ``8k + l`` holds item ``8l + k``
(:func:`deephash_zoo.retrieval.kernels.transpose_blocks`). Eight 8-lane popcount vectors then pack, by shifts
and ORs, into one 64-byte vector whose byte ``p`` is item ``p``'s distance: one byte compare gives a 64-bit
mask in item order, where the natural layout needs eight compares and seven mask merges (on Intel the same
port as the popcounts). Distances must fit a byte: codes of at most 255 bits
(:data:`deephash_zoo.retrieval.kernels.MAX_BITS`). A key ``2 * distance + relevant`` is a byte up to 127 bits
and 16 bits beyond.

Everything here is imported only where numba is (the ``fast`` extra). numba's on-disk cache of the kernel
tracks :mod:`.kernels`' source file only: after editing this module, delete the ``*.nbi``/``*.nbc`` files in
``deephash_zoo/retrieval/__pycache__`` (or touch ``kernels.py``), else the cached machine code of the old
intrinsics runs.
"""
from __future__ import annotations

import functools
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ['block_keys', 'block_store_keys', 'stored_below', 'sweep_popcount_sum', 'key_masks',
           'relevant_mask', 'compress_store', 'chunk_min', 'block_equal', 'pack64']

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V64X64 = ir.VectorType(_I64, 64)
_V8X64 = ir.VectorType(_I64, 8)
_BYTES = ir.VectorType(_I8, 64)


def _splat(builder: ir.IRBuilder, value: ir.Value, vty: ir.VectorType) -> ir.Value:
    undef = ir.Constant(vty, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


def _pointer(context: Any, builder: ir.IRBuilder, aty: Any, array: Any, index: list, vty: ir.Type) -> ir.Value:
    ptr = cgutils.get_item_pointer(context, builder, aty, array, index, wraparound=False, boundscheck=False)
    return builder.bitcast(ptr, vty.as_pointer())


def _popcounts(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> ir.Value:
    """<64 x i64>: popcount(q[w] ^ db[w, base + i]) summed over the code's 64-bit words, for i < 64. Codes of
    one word (64 bits and fewer: every model of the zoo) take a straight path without the word loop's
    accumulator."""
    dbty, qty = sig.args[0], sig.args[1]
    db = context.make_array(dbty)(context, builder, args[0])
    q = context.make_array(qty)(context, builder, args[1])
    base = args[2]
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V64X64, [_V64X64]), 'llvm.ctpop.v64i64')

    def word(w: ir.Value) -> ir.Value:
        v = builder.load(_pointer(context, builder, dbty, db, [w, base], _V64X64), align=8)
        qw = builder.load(_pointer(context, builder, qty, q, [w], _I64))
        return builder.call(ctpop, [builder.xor(v, _splat(builder, qw, _V64X64))])

    words = builder.extract_value(db.shape, 0)
    acc_ptr = cgutils.alloca_once(builder, _V64X64)
    zero = ir.Constant(_I64, 0)
    with builder.if_else(builder.icmp_signed('==', words, ir.Constant(_I64, 1)), likely=True) as (one, many):
        with one:
            builder.store(word(zero), acc_ptr)
        with many:
            builder.store(ir.Constant(_V64X64, [0] * 64), acc_ptr)
            with cgutils.for_range(builder, words) as loop:
                builder.store(builder.add(builder.load(acc_ptr), word(loop.index)), acc_ptr)
    return builder.load(acc_ptr)


def _packed(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> ir.Value:
    """<64 x i8>: byte p = the distance of item base + p of a block-transposed block (lane l of vector k
    holds item 8l + k, so vector k shifted left by 8k lands in byte 8l + k)."""
    acc = _popcounts(context, builder, sig, args)
    packed = None
    for k in range(8):
        lanes = ir.Constant(ir.VectorType(_I32, 8), list(range(8 * k, 8 * k + 8)))
        part = builder.shuffle_vector(acc, acc, lanes)
        if k == 0:
            packed = part
        else:
            packed = builder.or_(packed, builder.shl(part, ir.Constant(_V8X64, [8 * k] * 8)))
    return builder.bitcast(packed, _BYTES)


def _keys(context: Any, builder: ir.IRBuilder, sig: Any, args: Any, out_index: int) -> tuple:
    """<64 x iK>: the block's keys ``2 * distance + relevant`` (relevant: bit i of ``args[3]``), stored at
    ``out[base:base+64]`` (K: the out array's width, 8 or 16 bits)."""
    distances = _packed(context, builder, sig, args)
    oty = sig.args[out_index]
    out = context.make_array(oty)(context, builder, args[out_index])
    ety = context.get_data_type(oty.dtype)
    vty = ir.VectorType(ety, 64)
    relevant = _mask_bits(builder, args[3], vty)
    wide = distances if ety.width == 8 else builder.zext(distances, vty)
    keys = builder.or_(builder.shl(wide, _splat(builder, ir.Constant(ety, 1), vty)), relevant)
    builder.store(keys, _pointer(context, builder, oty, out, [args[2]], vty), align=1)
    return keys, ety, vty


def target_features() -> list[str]:
    """The CPU features numba compiles for: ``NUMBA_CPU_FEATURES`` where set, else this CPU's (asked of LLVM
    once)."""
    from numba.core import config

    return (config.CPU_FEATURES if config.CPU_FEATURES is not None else _host_cpu_features()).split(',')


@functools.cache
def _host_cpu_features() -> str:
    from numba.core import codegen

    return codegen.get_host_cpu_features()


def _mask_bits(builder: ir.IRBuilder, mask: ir.Value, vty: ir.VectorType) -> ir.Value:
    """<64 x iK>: element i = bit i of the 64-bit ``mask`` (0 or 1). With AVX-512 BW a mask register does it
    in one instruction; elsewhere LLVM would split the mask into 64 scalar shifts and inserts (on AVX2 that
    tripled the sweep), so the mask is broadcast, each byte spread over its 8 elements by a shuffle, and
    tested against the element's own bit."""
    if '+avx512bw' in target_features():
        return builder.zext(builder.bitcast(mask, ir.VectorType(ir.IntType(1), 64)), vty)
    splat = builder.bitcast(_splat(builder, mask, _V8X64), _BYTES)  # every 8 bytes: the mask's 8 bytes
    spread = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(_I32, 64), [i // 8 for i in range(64)]))
    bit = builder.and_(spread, ir.Constant(_BYTES, [1 << (i % 8) for i in range(64)]))
    return builder.zext(builder.icmp_unsigned('!=', bit, ir.Constant(_BYTES, [0] * 64)), vty)


def _below(builder: ir.IRBuilder, keys: ir.Value, ety: ir.Type, vty: ir.Type, bound: ir.Value) -> ir.Value:
    """Bit i set where key i < ``bound`` (2t: the distance is below t)."""
    return builder.bitcast(builder.icmp_unsigned('<', keys, _splat(builder, builder.trunc(bound, ety), vty)), _I64)


@intrinsic
def block_keys(typingctx: Any, db_words: Any, q: Any, base: Any, relevant: Any, bound: Any, out: Any) -> Any:
    """``out[base:base+64]`` = keys ``2 * distance + relevant`` of items ``base .. base+63`` (``relevant``: a
    64-bit mask; ``db_words`` block-transposed ``(words, n)``); returns the mask of keys ``< bound``."""
    sig = types.uint64(db_words, q, types.int64, types.uint64, types.int64, out)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        keys, ety, vty = _keys(context, builder, signature, args, 5)
        return _below(builder, keys, ety, vty, args[4])
    return sig, codegen


@intrinsic
def block_store_keys(typingctx: Any, db_words: Any, q: Any, base: Any, relevant: Any, out: Any) -> Any:
    """``out[base:base+64]`` = keys ``2 * distance + relevant`` of items ``base .. base+63``."""
    sig = types.void(db_words, q, types.int64, types.uint64, out)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        _keys(context, builder, signature, args, 4)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def stored_below(typingctx: Any, keys: Any, base: Any, bound: Any) -> Any:
    """Bit i set where the stored key ``keys[base + i]`` is ``< bound``, for 64 items."""
    sig = types.uint64(keys, types.int64, types.int64)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        v, ety, vty = _load_keys(context, builder, signature.args[0], args[0], args[1])
        return _below(builder, v, ety, vty, args[2])
    return sig, codegen


@intrinsic
def sweep_popcount_sum(typingctx: Any, db_words: Any, q: Any) -> Any:
    """The sum of every item's distance to ``q``: XOR + popcount over the whole database into one vector
    register, reduced once at the end. The compulsory work of every mAP and nothing else: the benchmark's
    floor (summed so that it is not optimised away)."""
    sig = types.uint64(db_words, q)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        dbty, qty = signature.args
        db = context.make_array(dbty)(context, builder, args[0])
        qa = context.make_array(qty)(context, builder, args[1])
        words = builder.extract_value(db.shape, 0)
        blocks = builder.udiv(builder.extract_value(db.shape, 1), ir.Constant(_I64, 64))
        acc_ptr = cgutils.alloca_once_value(builder, ir.Constant(_V64X64, [0] * 64))
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V64X64, [_V64X64]),
                                               'llvm.ctpop.v64i64')
        with cgutils.for_range(builder, words) as word:
            qv = _splat(builder, builder.load(_pointer(context, builder, qty, qa, [word.index], _I64)), _V64X64)
            with cgutils.for_range(builder, blocks) as block:
                base = builder.mul(block.index, ir.Constant(_I64, 64))
                v = builder.load(_pointer(context, builder, dbty, db, [word.index, base], _V64X64), align=8)
                builder.store(builder.add(builder.load(acc_ptr), builder.call(ctpop, [builder.xor(v, qv)])), acc_ptr)
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_V64X64]),
                                                'llvm.vector.reduce.add.v64i64')
        return builder.call(reduce, [builder.load(acc_ptr)])
    return sig, codegen


def _load_keys(context: Any, builder: ir.IRBuilder, aty: Any, array_value: Any, offset: Any) -> tuple:
    a = context.make_array(aty)(context, builder, array_value)
    ety = context.get_data_type(aty.dtype)
    vty = ir.VectorType(ety, 64)
    return builder.load(_pointer(context, builder, aty, a, [offset], vty), align=1), ety, vty


@intrinsic
def key_masks(typingctx: Any, keys: Any, offset: Any, d: Any) -> Any:
    """``(at_d, relevant_at_d)`` of the 64 keys ``2 * distance + relevant`` from ``offset``: bit i set where
    key i has distance ``d``, and where it has distance ``d`` and is relevant."""
    sig = types.UniTuple(types.uint64, 2)(keys, types.int64, types.int64)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        v, ety, vty = _load_keys(context, builder, signature.args[0], args[0], args[1])
        relevant_key = builder.trunc(builder.add(builder.add(args[2], args[2]), ir.Constant(_I64, 1)), ety)
        target = _splat(builder, relevant_key, vty)
        at_d = builder.icmp_unsigned('==', builder.or_(v, _splat(builder, ir.Constant(ety, 1), vty)), target)
        relevant = builder.icmp_unsigned('==', v, target)
        return context.make_tuple(builder, signature.return_type,
                                  [builder.bitcast(at_d, _I64), builder.bitcast(relevant, _I64)])
    return sig, codegen


@intrinsic
def relevant_mask(typingctx: Any, keys: Any, offset: Any) -> Any:
    """Bit i set where key ``keys[offset + i]`` is odd (its item relevant), for 64 keys."""
    sig = types.uint64(keys, types.int64)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        v, ety, vty = _load_keys(context, builder, signature.args[0], args[0], args[1])
        odd = builder.and_(v, _splat(builder, ir.Constant(ety, 1), vty))
        return builder.bitcast(builder.icmp_unsigned('!=', odd, ir.Constant(vty, [0] * 64)), _I64)
    return sig, codegen


@intrinsic
def compress_store(typingctx: Any, src: Any, offset: Any, mask: Any, dst: Any, at: Any) -> Any:
    """``dst[at:]`` = ``src[offset + i]`` for each set bit ``i`` of ``mask``, in order; all 64 positions from
    ``at`` are written (``dst`` needs 64 spare). LLVM's vector compress: one ``VPCOMPRESSB`` (register form)
    on AVX-512 VBMI2, a slow generic expansion elsewhere (where the kernel takes its scalar loop instead)."""
    sig = types.void(src, types.int64, types.uint64, dst, types.int64)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        sty, dty = signature.args[0], signature.args[3]
        src = context.make_array(sty)(context, builder, args[0])
        dst = context.make_array(dty)(context, builder, args[3])
        ety = context.get_data_type(sty.dtype)
        lanes = 512 // ety.width  # one 64-byte register a part: 16-bit keys in two (LLVM 22 fails on 64 x i16)
        vty = ir.VectorType(ety, lanes)
        mty = ir.IntType(lanes)
        compress = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, ir.VectorType(
            ir.IntType(1), lanes), vty]), f'llvm.experimental.vector.compress.v{lanes}i{ety.width}')
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(mty, [mty]), f'llvm.ctpop.i{lanes}')
        at = args[4]
        for part in range(64 // lanes):
            offset = builder.add(args[1], ir.Constant(_I64, part * lanes))
            v = builder.load(_pointer(context, builder, sty, src, [offset], vty), align=1)
            bits = builder.trunc(builder.lshr(args[2], ir.Constant(_I64, part * lanes)), mty)
            packed = builder.call(compress, [v, builder.bitcast(bits, ir.VectorType(ir.IntType(1), lanes)),
                                             ir.Constant(vty, ir.Undefined)])
            builder.store(packed, _pointer(context, builder, dty, dst, [at], vty), align=1)
            at = builder.add(at, builder.zext(builder.call(ctpop, [bits]), _I64))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def chunk_min(typingctx: Any, keys: Any, offset: Any) -> Any:
    """The smallest of the 64 keys from ``offset``."""
    sig = keys.dtype(keys, types.int64)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        v, ety, vty = _load_keys(context, builder, signature.args[0], args[0], args[1])
        umin = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ety, [vty]),
                                              f'llvm.vector.reduce.umin.v64i{ety.width}')
        return builder.call(umin, [v])
    return sig, codegen


@intrinsic
def block_equal(typingctx: Any, values: Any, base: Any, value: Any) -> Any:
    """Bit i set where ``values[base + i] == value``, for 64 values (class indices of a block)."""
    sig = types.uint64(values, types.int64, values.dtype)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        v, ety, vty = _load_keys(context, builder, signature.args[0], args[0], args[1])
        return builder.bitcast(builder.icmp_unsigned('==', v, _splat(builder, args[2], vty)), _I64)
    return sig, codegen


@intrinsic
def pack64(typingctx: Any, values: Any, start: Any, out: Any, at: Any, signs: Any) -> Any:
    """``out[at:at+8]`` = ``numpy.packbits`` of the 64 values from ``values[start]`` (1-d): bit set where a
    value is > 0 (``signs``) or != 0 (multi-hot labels), the first value in the first byte's high bit. Returns
    whether all 64 are valid: -1 or +1 (``signs``), else 0 or 1. Each group of 8 is reversed before the
    compare, so that the compare's 64-bit mask is already packbits' byte layout."""
    sig = types.boolean(values, types.int64, out, types.int64, types.boolean)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        vty_in, oty = signature.args[0], signature.args[2]
        arr = context.make_array(vty_in)(context, builder, args[0])
        ety = context.get_data_type(vty_in.dtype)
        vty = ir.VectorType(ety, 64)
        v = builder.load(_pointer(context, builder, vty_in, arr, [args[1]], vty), align=1)
        order = [8 * g + 7 - k for g in range(8) for k in range(8)]
        v = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 64), order))
        is_float = isinstance(ety, (ir.FloatType, ir.DoubleType))
        signed = vty_in.dtype.signed if hasattr(vty_in.dtype, 'signed') else False

        def const(x: float) -> ir.Value:
            return ir.Constant(vty, [float(x) if is_float else int(x)] * 64)

        def equal(x: float) -> ir.Value:
            return builder.fcmp_ordered('==', v, const(x)) if is_float else builder.icmp_signed('==', v, const(x))

        if is_float:
            positive, nonzero = builder.fcmp_ordered('>', v, const(0)), builder.fcmp_unordered('!=', v, const(0))
        else:
            positive = (builder.icmp_signed if signed else builder.icmp_unsigned)('>', v, const(0))
            nonzero = builder.icmp_unsigned('!=', v, const(0))
        bits = builder.select(args[4], positive, nonzero)
        valid = builder.select(args[4], builder.or_(equal(1), equal(-1)) if signed or is_float else equal(1),
                               builder.or_(equal(0), equal(1)))
        o = context.make_array(oty)(context, builder, args[2])
        builder.store(builder.bitcast(bits, _I64), _pointer(context, builder, oty, o, [args[3]], _I64), align=1)
        return builder.icmp_unsigned('==', builder.bitcast(valid, _I64), ir.Constant(_I64, -1))
    return sig, codegen
