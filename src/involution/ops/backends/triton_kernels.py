"""Triton kernels of the involution op: forward, grad_input and grad_weight (imported lazily by ``triton_impl``).

Tensors are read and written through their strides, so NCHW, channels_last, sliced and permuted tensors need no
copy. Every program owns a block of ``BLOCK_P`` pixels of one (sample, group) and, in forward and grad_input, a
block of ``BLOCK_C`` of that group's C/G channels: the per-pixel kernel tap it loads once serves all ``BLOCK_C``
channels, which is what makes the op bandwidth-bound rather than bound by reloading weights. No atomics are used:

* forward:     out[c, o]  = sum_taps w[tap, o] * x[c, in(o, tap)]
* grad_input:  gx[c, p]   = sum_taps w[tap, o(p, tap)] * gy[c, o(p, tap)] over the output pixels o that read p
  (a gather, so every input pixel is written by exactly one program);
* grad_weight: gw[tap, o] = sum_c gy[c, o] * x[c, in(o, tap)] over the group's channels, looped in the program.

Products are accumulated in float32 (float64 for float64 tensors) and rounded once when stored. Every sum is taken
in one fixed order (taps in row-major order; grad_weight's channels one by one, in channel order), whatever tile
the autotuner picked: the tile only decides which program computes which elements, so every config, and so every
process, gives the same bits.

The autotuner keys on the shape class, not the exact shape: C/G, the kernel size and stride, the next powers of
two of the input's and output's pixel counts and which dimension of each tensor is innermost (computed by
``triton_impl.shape_class`` and passed as the otherwise unused ``*_CLASS`` arguments), and, added by Triton, the
dtypes. A new image size in the same bucket reuses the tuned tile.

``TRITON_INTERPRET=1``, set before Triton is first imported in the process (Triton decorates its own library then,
and ``@triton.jit`` reads it again when this module is imported), runs these kernels in Triton's interpreter, on
CPU tensors too (slowly, for tests). :data:`INTERPRETED` records which mode the module got.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Whether the kernels below were decorated for Triton's CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)
# Triton decorated its own library (tl.sum, tl.cdiv) when it was first imported; kernels of the other kind could
# not call it, so refuse to load rather than fail at the first launch.
if isinstance(tl.cdiv, triton.JITFunction) == INTERPRETED:
    raise ImportError(
        f"TRITON_INTERPRET={'1' if INTERPRETED else '0'} now, but not when Triton was first imported in this process; "
        "set it (or unset it) in the environment before Python starts"
    )

# (BLOCK_P, BLOCK_C, num_warps) tried by the autotuner on a GPU. RedNet has 16 channels per group, so BLOCK_C=16
# keeps a whole group in one program; the others cover few-channel groups and small feature maps. In grad_weight,
# BLOCK_C only unrolls the channel loop.
_GPU_TILES = [
    (64, 16, 4),
    (128, 16, 4),
    (256, 16, 8),
    (128, 8, 4),
    (256, 8, 4),
    (64, 32, 4),
    (128, 32, 8),
    (32, 16, 2),
]
# Under the interpreter one small tile, so tests see several pixel blocks and channel blocks with ragged tails.
_INTERPRETER_TILE = (64, 8, 1)

# Kernel arguments the tuned tile depends on; Triton adds the tensors' dtypes. No exact image size: the *_CLASS
# arguments bucket it.
_TUNE_KEY = ["CG", "KH", "KW", "SH", "SW", "IN_PIX_CLASS", "OUT_PIX_CLASS", "LAYOUT_CLASS"]


def _configs() -> list[triton.Config]:
    tiles = [_INTERPRETER_TILE] if INTERPRETED else _GPU_TILES
    return [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w) for p, c, w in tiles]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """Drop tiles whose channel block is more than twice the group's channels (they would idle most lanes)."""
    cg = int(named_args["CG"])
    kept = [cfg for cfg in configs if cfg.kwargs["BLOCK_C"] <= max(8, 2 * cg)]
    return kept or configs


def _tuned(fn: triton.JITFunction, key: list[str]) -> triton.runtime.Autotuner:
    """``fn`` autotuned over the tiles above, keyed on the argument names ``key`` (the 3-D kernels add theirs)."""
    return triton.autotune(configs=_configs(), key=key, prune_configs_by={"early_config_prune": _prune})(fn)


def _autotuned(fn: triton.JITFunction) -> triton.runtime.Autotuner:
    return _tuned(fn, _TUNE_KEY)


# ------------------------------------------------------------------------------------------------- helpers
@triton.jit
def _program_tile(G, n_cblocks, n_pix, width, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Split the 1-D program id into its sample (as int64: batch offsets can pass 2**31 elements), group, pixel
    rows and columns (in an image ``width`` wide) with their mask, and channel offsets within the group.

    Channel blocks vary fastest, so the programs sharing a block of kernel taps run side by side and the taps
    are read from DRAM once."""
    pid = tl.program_id(0)
    n_pblocks = tl.cdiv(n_pix, BLOCK_P)
    cb = pid % n_cblocks
    rest = pid // n_cblocks
    ng = rest // n_pblocks
    offs_p = (rest % n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    return (ng // G).to(tl.int64), ng % G, offs_p // width, offs_p % width, offs_p < n_pix, offs_c


@triton.jit
def _reader_index(t, S, size_out):
    """The output row (or column) ``o`` with ``o * S == t`` (``t`` = input row + padding - tap offset), and whether
    there is one inside the output."""
    # Clamped before dividing: integer division of negatives rounds differently on GPUs and in the interpreter.
    o = tl.where(t >= 0, t, 0) // S
    return o, (t >= 0) & (o * S == t) & (o < size_out)


@triton.jit
def _channel_dot(gy_at, x_at, b_sc, a_sc, g, CG, ok, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                 ACC: tl.constexpr):
    """(BLOCK_P,) sums over group g's CG channels of gy * x at the positions gy_at / x_at (channel strides b_sc /
    a_sc), masked by ok: the channels added one by one in channel order, so the bits do not depend on BLOCK_C
    (it only unrolls the loop; the channels past CG it pads with add exact zeros). grad_weight's reduction."""
    acc = tl.zeros([BLOCK_P], dtype=ACC)
    for c0 in range(0, CG, BLOCK_C):
        for i in tl.static_range(BLOCK_C):
            chan = g * CG + c0 + i
            m = ok & (c0 + i < CG)
            gys = tl.load(gy_at + chan * b_sc, mask=m, other=0.0)
            xs = tl.load(x_at + chan * a_sc, mask=m, other=0.0)
            acc += gys.to(ACC) * xs.to(ACC)
    return acc


# ------------------------------------------------------------------------------------------------- forward
@_autotuned
@triton.jit
def involution_fwd_kernel(
    x_ptr, w_ptr, y_ptr,
    G, CG, H, W, HO, WO,
    a_sn, a_sc, a_sh, a_sw,  # input x
    w_sn, w_sg, w_su, w_sv, w_sh, w_sw,  # weight
    b_sn, b_sc, b_sh, b_sw,  # output y
    SH, SW, PH, PW, DH, DW,
    IN_PIX_CLASS, OUT_PIX_CLASS, LAYOUT_CLASS,  # the autotuner's key only
    KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y (N, C, HO, WO) = involution of x (N, C, H, W) with w (N, G, KH, KW, HO, WO)."""
    n64, g, oi, oj, p_ok, offs_c = _program_tile(G, tl.cdiv(CG, BLOCK_C), HO * WO, WO, BLOCK_P, BLOCK_C)
    c_ok = (offs_c < CG)[:, None]
    chan = g * CG + offs_c
    x_base = x_ptr + n64 * a_sn + (chan * a_sc)[:, None]
    w_base = w_ptr + n64 * w_sn + g * w_sg + oi * w_sh + oj * w_sw
    row0 = oi * SH - PH  # input row / column read by tap 0
    col0 = oj * SW - PW

    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for u in range(KH):
        r = row0 + u * DH
        r_ok = p_ok & (r >= 0) & (r < H)
        x_row = x_base + (r * a_sh)[None, :]
        w_row = w_base + u * w_su
        for v in range(KW):
            q = col0 + v * DW
            ok = r_ok & (q >= 0) & (q < W)
            # taps that fall in the padding contribute nothing: their weights are not even read
            tap = tl.load(w_row + v * w_sv, mask=ok, other=0.0).to(ACC)
            xs = tl.load(x_row + (q * a_sw)[None, :], mask=c_ok & ok[None, :], other=0.0)
            acc += xs.to(ACC) * tap[None, :]

    y = y_ptr + n64 * b_sn + (chan * b_sc)[:, None] + (oi * b_sh + oj * b_sw)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=c_ok & p_ok[None, :])


# ---------------------------------------------------------------------------------------------- grad_input
@_autotuned
@triton.jit
def involution_bwd_input_kernel(
    gy_ptr, w_ptr, gx_ptr,
    G, CG, H, W, HO, WO,
    a_sn, a_sc, a_sh, a_sw,  # grad_input gx
    w_sn, w_sg, w_su, w_sv, w_sh, w_sw,  # weight
    b_sn, b_sc, b_sh, b_sw,  # grad_output gy
    SH, SW, PH, PW, DH, DW,
    IN_PIX_CLASS, OUT_PIX_CLASS, LAYOUT_CLASS,  # the autotuner's key only
    KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gx (N, C, H, W): for each input pixel, the sum over the output pixels and taps that read it."""
    n64, g, ri, qj, p_ok, offs_c = _program_tile(G, tl.cdiv(CG, BLOCK_C), H * W, W, BLOCK_P, BLOCK_C)
    c_ok = (offs_c < CG)[:, None]
    chan = g * CG + offs_c
    gy_base = gy_ptr + n64 * b_sn + (chan * b_sc)[:, None]
    w_base = w_ptr + n64 * w_sn + g * w_sg
    row0 = ri + PH  # output row i reads this pixel at tap u when i * SH == row0 - u * DH
    col0 = qj + PW

    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for u in range(KH):
        i, i_ok = _reader_index(row0 - u * DH, SH, HO)
        i_ok = i_ok & p_ok
        w_row = w_base + u * w_su + i * w_sh
        gy_row = gy_base + (i * b_sh)[None, :]
        for v in range(KW):
            j, j_ok = _reader_index(col0 - v * DW, SW, WO)
            ok = i_ok & j_ok
            tap = tl.load(w_row + v * w_sv + j * w_sw, mask=ok, other=0.0).to(ACC)
            gys = tl.load(gy_row + (j * b_sw)[None, :], mask=c_ok & ok[None, :], other=0.0)
            acc += gys.to(ACC) * tap[None, :]

    gx = gx_ptr + n64 * a_sn + (chan * a_sc)[:, None] + (ri * a_sh + qj * a_sw)[None, :]
    tl.store(gx, acc.to(gx_ptr.dtype.element_ty), mask=c_ok & p_ok[None, :])


# --------------------------------------------------------------------------------------------- grad_weight
@_autotuned
@triton.jit
def involution_bwd_weight_kernel(
    gy_ptr, x_ptr, gw_ptr,
    G, CG, H, W, HO, WO,
    a_sn, a_sc, a_sh, a_sw,  # input x
    w_sn, w_sg, w_su, w_sv, w_sh, w_sw,  # grad_weight gw
    b_sn, b_sc, b_sh, b_sw,  # grad_output gy
    SH, SW, PH, PW, DH, DW,
    IN_PIX_CLASS, OUT_PIX_CLASS, LAYOUT_CLASS,  # the autotuner's key only
    KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gw (N, G, KH, KW, HO, WO): per tap and output pixel, the sum over the group's channels of gy * x.

    Launched with one program per (sample, group, pixel block): it loops over the group's channels itself, so
    each gradient element is a plain sum, written once. The channels are added one by one in channel order (no
    tree reduction, whose order would follow the tile's layout), so the bits do not depend on the tuned config:
    ``BLOCK_C`` only unrolls the loop, and the channels past C/G it pads with add exact zeros."""
    n64, g, oi, oj, p_ok, _ = _program_tile(G, 1, HO * WO, WO, BLOCK_P, BLOCK_C)
    x_base = x_ptr + n64 * a_sn
    gy_base = gy_ptr + n64 * b_sn + oi * b_sh + oj * b_sw
    gw_base = gw_ptr + n64 * w_sn + g * w_sg + oi * w_sh + oj * w_sw
    row0 = oi * SH - PH
    col0 = oj * SW - PW

    for u in range(KH):
        r = row0 + u * DH
        r_ok = p_ok & (r >= 0) & (r < H)
        x_row = x_base + r * a_sh
        for v in range(KW):
            q = col0 + v * DW
            ok = r_ok & (q >= 0) & (q < W)
            # gy's pixels are the same for every tap; after the first tap they come from L1/L2, not DRAM
            acc = _channel_dot(gy_base, x_row + q * a_sw, b_sc, a_sc, g, CG, ok, BLOCK_P, BLOCK_C, ACC)
            tl.store(gw_base + u * w_su + v * w_sv, acc.to(gw_ptr.dtype.element_ty), mask=p_ok)
