"""Hash-code conversion, validation and Hamming distances.

Two code layouts are used throughout the project:

* sign codes: shape ``(n, bits)``, values in {-1, +1} (numpy or torch, any int/float dtype);
* packed codes: ``uint8``, shape ``(n, ceil(bits / 8))``, ``numpy.packbits`` order along axis 1
  (+1 -> bit 1, -1 -> bit 0, big-endian bit order, zero padding bits at the end).

Everything else in :mod:`deephash_zoo.retrieval` works on packed codes, so conversion and validation
live here, in one place.  A ``uint8`` array is always read as packed (``-1`` cannot be stored in
``uint8``); pass ``bits=`` to have its width checked.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ['as_packed', 'code_words', 'distance_dtype', 'hamming_distances', 'hamming_from_words', 'popcount']

# np.bitwise_count exists from NumPy 2.0; the project still allows numpy>=1.26.
_HAS_BITWISE_COUNT = hasattr(np, 'bitwise_count')
_XOR_BUFFER_BYTES = 1 << 20
_POPCOUNT_TABLE = np.array([bin(i).count('1') for i in range(256)], dtype=np.uint8)


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """Accept numpy arrays, torch tensors (on any device) and array-likes without importing torch."""
    if hasattr(x, 'detach') and hasattr(x, 'cpu'):
        x = x.detach().cpu()
        if str(x.dtype) == 'torch.bfloat16':  # numpy has no bfloat16 (a bf16 model's relaxed codes)
            x = x.float()
        x = x.numpy()
    try:
        arr = np.asarray(x)
    except ValueError as e:  # numpy's 'inhomogeneous shape after 1 dimensions' for rows of different lengths
        raise ValueError(f'{what} must be a rectangular numeric array: {e}') from None
    if arr.dtype == object:
        raise ValueError(f'{what} must be a numeric array, got dtype object')
    return arr


def as_packed(codes: Any, bits: int | None = None) -> tuple[np.ndarray, int]:
    """Return ``(packed uint8 codes, bits)`` for sign or packed codes, validating them.

    Raises ValueError for a wrong rank, an empty code length, NaN or values other than -1/+1 in sign
    codes, a packed width that does not match ``bits``, or set padding bits.
    """
    arr = _to_numpy(codes, 'codes')
    if arr.ndim != 2:
        raise ValueError(
            f'codes must be 2-D: (n, bits) sign codes or (n, ceil(bits/8)) packed uint8 codes; got shape {arr.shape}'
        )
    if bits is not None and (not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or bits < 1):
        raise ValueError(f'bits must be a positive integer, got {bits!r}')
    if arr.dtype == np.uint8:
        return _check_packed(arr, bits)
    if arr.dtype == np.bool_:
        raise ValueError('boolean codes are ambiguous; expected sign codes in {-1, +1} or packed uint8 codes')
    if arr.dtype.kind not in 'iuf':
        raise ValueError(f'codes must be sign codes in {{-1, +1}} or packed uint8; got dtype {arr.dtype}')
    return _pack_signs(arr, bits)


def _check_packed(arr: np.ndarray, bits: int | None) -> tuple[np.ndarray, int]:
    ncols = arr.shape[1]
    if ncols == 0:
        raise ValueError('packed codes have 0 columns; expected ceil(bits/8) >= 1 bytes per code')
    if bits is None:
        bits = 8 * ncols
        _warn_if_unpacked(arr)
    elif ncols != -(-bits // 8):
        raise ValueError(
            f'packed codes for {bits} bits need {-(-bits // 8)} uint8 columns, got {ncols} '
            '(unpacked 0/1 bits? pass sign codes in {-1, +1} instead)'
        )
    pad = 8 * ncols - bits
    if pad and arr.shape[0] and np.any(arr[:, -1] & np.uint8((1 << pad) - 1)):
        raise ValueError(f'packed codes have non-zero padding bits beyond bit {bits}; expected numpy.packbits layout')
    return np.ascontiguousarray(arr), int(bits)


def _warn_if_unpacked(arr: np.ndarray) -> None:
    """uint8 codes holding only 0s and 1s are most likely unpacked bits, which would be read as 8 times as many
    bits (rankings survive, the code length and the PR curve's radii do not). Real packed codes use all eight bits
    of their bytes, and a collapsed set holds one code, so both 0 and 1 must occur before this speaks."""
    if arr.size >= 16 and arr.max() == 1 and arr.min() == 0:
        warnings.warn(f'uint8 codes of {arr.shape[1]} columns hold only 0 and 1: read as packed bits, '
                      f'{8 * arr.shape[1]} a code; if they are unpacked 0/1 bits, pass np.packbits(codes, axis=1) '
                      'or the sign codes 2 * codes - 1', UserWarning, stacklevel=4)


PACK_MIN_ELEMENTS = 1 << 20
"""Arrays of at least this many values are packed by the compiled packer where numba is; smaller ones by NumPy,
whose call costs less than starting the threads (and than importing numba, for a first small array)."""


def compiled_pack(arr: np.ndarray, signs: bool, width: int | None = None) -> tuple[np.ndarray, bool] | None:
    """:func:`deephash_zoo.retrieval.kernels.pack_rows` for an array of PACK_MIN_ELEMENTS values or more, else
    None without importing numba: the caller packs with NumPy."""
    if arr.size < PACK_MIN_ELEMENTS:
        return None
    from . import kernels

    return kernels.pack_rows(arr, signs, width)


def _pack_signs(arr: np.ndarray, bits: int | None) -> tuple[np.ndarray, int]:
    if arr.shape[1] == 0:
        raise ValueError('sign codes have 0 columns; expected shape (n, bits) with bits >= 1')
    if bits is not None and arr.shape[1] != bits:
        raise ValueError(f'sign codes have {arr.shape[1]} columns but bits={bits}')
    fast = compiled_pack(arr, signs=True)
    if fast is not None and fast[1]:
        return fast[0], int(arr.shape[1])
    if arr.dtype.kind == 'f' and np.isnan(arr).any():
        raise ValueError('codes contain NaN; expected sign codes in {-1, +1}')
    if arr.dtype.kind in 'iu':  # three reductions and no temporaries: values in [-1, 1] and none zero
        valid = arr.min(initial=-1) >= -1 and arr.max(initial=1) <= 1 and np.count_nonzero(arr) == arr.size
    else:
        valid = ((arr == 1) | (arr == -1)).all()
    if not valid:
        ok = (arr == 1) | (arr == -1)
        bad = arr[~ok].flat[0].item()
        raise ValueError(
            f'codes contain the non-binary value {bad!r}; expected sign codes in {{-1, +1}} '
            '(binarise with sign() and map 0 to a side first) or packed uint8'
        )
    return np.packbits(arr > 0, axis=1), int(arr.shape[1])


def code_words(packed: np.ndarray) -> np.ndarray:
    """View packed codes as ``(n, words)`` unsigned machine words, zero-padded, for fast XOR/popcount.

    Byte order inside a word does not matter: only popcounts of XORs of equally laid-out words are taken.
    """
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    nbytes = packed.shape[1]
    width = 1 if nbytes <= 1 else 2 if nbytes <= 2 else 4 if nbytes <= 4 else 8
    padded_len = -(-nbytes // width) * width
    if padded_len != nbytes:
        padded = np.zeros((packed.shape[0], padded_len), dtype=np.uint8)
        padded[:, :nbytes] = packed
        packed = padded
    return packed.view(np.dtype(f'u{width}'))


def popcount(x: np.ndarray) -> np.ndarray:
    """Per-element popcount as uint8; np.bitwise_count when available, else a byte lookup table."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(x)
    b = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, x.dtype.itemsize)
    return _POPCOUNT_TABLE[b].sum(axis=-1, dtype=np.uint8)


def distance_dtype(nbytes: int) -> np.dtype:
    """Smallest dtype that holds every Hamming distance for codes of ``nbytes`` bytes."""
    return np.dtype(np.uint8) if 8 * nbytes <= 255 else np.dtype(np.uint16)


def hamming_from_words(q_words: np.ndarray, db_words: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """Hamming distance matrix ``(nq, ndb)`` between word views made by :func:`code_words`.

    The XOR buffer covers only a few query rows at a time so it stays in cache (measured ~20 % faster
    than one chunk-sized buffer).
    """
    nq, ndb = q_words.shape[0], db_words.shape[0]
    out = np.empty((nq, ndb), dtype=out_dtype)
    step = max(1, _XOR_BUFFER_BYTES // max(1, ndb * db_words.dtype.itemsize))
    buf = np.empty((min(step, nq), ndb), dtype=db_words.dtype)
    for start in range(0, nq, step):
        stop = min(start + step, nq)
        b, o = buf[: stop - start], out[start:stop]
        for w in range(db_words.shape[1]):
            np.bitwise_xor(q_words[start:stop, w, None], db_words[None, :, w], out=b)
            if w == 0 and _HAS_BITWISE_COUNT:
                np.bitwise_count(b, out=o)  # no temporary in the common one-word case
            elif w == 0:
                o[...] = popcount(b)
            else:
                o += popcount(b)
    return out


def hamming_distances(q_packed: np.ndarray, db_packed: np.ndarray) -> np.ndarray:
    """Hamming distances between a chunk of packed queries and packed database codes.

    Returns ``(nq, ndb)`` uint8 (codes up to 248 bits) or uint16.  Memory is O(nq * ndb): call it on
    query chunks for large databases.
    """
    for name, a in (('q_packed', q_packed), ('db_packed', db_packed)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 2:
            raise ValueError(f'{name} must be a 2-D uint8 packed code array (see as_packed)')
    if q_packed.shape[1] != db_packed.shape[1]:
        raise ValueError(
            f'packed code widths differ: queries have {q_packed.shape[1]} bytes, database {db_packed.shape[1]}'
        )
    dt = distance_dtype(q_packed.shape[1])
    return hamming_from_words(code_words(q_packed), code_words(db_packed), dt)
