"""Triton kernels of the 3-D involution op: forward, grad_input and grad_weight (imported lazily by ``triton_impl``).

The 2-D kernels of :mod:`.triton_kernels` with a depth axis: features (N, C, D, H, W), weights (N, G, Kd, Kh, Kw,
Do, Ho, Wo), every tensor read and written through its strides (NCDHW, NDHWC, the weight contiguous or the view of a
channels_last_3d generator output: no copies). The same tiling, helpers and tiles: a program owns ``BLOCK_P`` voxels
(depth-major, numbered like a flattened (D, H, W) volume) of one (sample, group) and, in forward and grad_input,
``BLOCK_C`` of that group's channels; grad_input is a gather (``_reader_index`` on each axis), grad_weight a
per-tap sum over the group's channels looped in the program. No atomics, so the results are deterministic:

* forward:     out[c, o]  = sum_taps w[tap, o] * x[c, in(o, tap)]
* grad_input:  gx[c, p]   = sum_taps w[tap, o(p, tap)] * gy[c, o(p, tap)] over the output voxels o that read p;
* grad_weight: gw[tap, o] = sum_c gy[c, o] * x[c, in(o, tap)], the channels one by one in channel order.

Products are accumulated in float32 (float64 for float64 tensors), the taps in (t, u, v) row-major order whatever
tile the autotuner picked, and rounded once when stored. The autotuner's key adds the depth kernel size and stride
to the 2-D one.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_kernels import _channel_dot, _program_tile, _reader_index, _tuned

# The 2-D key with the depth axis; the *_CLASS arguments count voxels instead of pixels.
_TUNE_KEY_3D = ["CG", "KD", "KH", "KW", "SD", "SH", "SW", "IN_PIX_CLASS", "OUT_PIX_CLASS", "LAYOUT_CLASS"]


def _autotuned3d(fn: triton.JITFunction) -> triton.runtime.Autotuner:
    return _tuned(fn, _TUNE_KEY_3D)


# ------------------------------------------------------------------------------------------------- helpers
@triton.jit
def _volume_tile(G, n_cblocks, n_vox, height, width, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """:func:`_program_tile` over a volume ``height`` x ``width`` per depth: the sample, group, voxel depths, rows
    and columns with their mask, and the channel offsets within the group."""
    n64, g, z, plane, p_ok, offs_c = _program_tile(G, n_cblocks, n_vox, height * width, BLOCK_P, BLOCK_C)
    return n64, g, z, plane // width, plane % width, p_ok, offs_c


# ------------------------------------------------------------------------------------------------- forward
@_autotuned3d
@triton.jit
def involution3d_fwd_kernel(
    x_ptr, w_ptr, y_ptr,
    G, CG, D, H, W, DO, HO, WO,
    a_sn, a_sc, a_sd, a_sh, a_sw,  # input x
    w_sn, w_sg, w_st, w_su, w_sv, w_sd, w_sh, w_sw,  # weight
    b_sn, b_sc, b_sd, b_sh, b_sw,  # output y
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    IN_PIX_CLASS, OUT_PIX_CLASS, LAYOUT_CLASS,  # the autotuner's key only
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y (N, C, DO, HO, WO) = involution of x (N, C, D, H, W) with w (N, G, KD, KH, KW, DO, HO, WO)."""
    n64, g, oz, oi, oj, p_ok, offs_c = _volume_tile(G, tl.cdiv(CG, BLOCK_C), DO * HO * WO, HO, WO, BLOCK_P, BLOCK_C)
    c_ok = (offs_c < CG)[:, None]
    chan = g * CG + offs_c
    x_base = x_ptr + n64 * a_sn + (chan * a_sc)[:, None]
    w_base = w_ptr + n64 * w_sn + g * w_sg + oz * w_sd + oi * w_sh + oj * w_sw
    dep0 = oz * SD - PD  # input depth / row / column read by tap 0
    row0 = oi * SH - PH
    col0 = oj * SW - PW

    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for t in range(KD):
        z = dep0 + t * DD
        z_ok = p_ok & (z >= 0) & (z < D)
        for u in range(KH):
            r = row0 + u * DH
            r_ok = z_ok & (r >= 0) & (r < H)
            x_row = x_base + (z * a_sd + r * a_sh)[None, :]
            w_row = w_base + t * w_st + u * w_su
            for v in range(KW):
                q = col0 + v * DW
                ok = r_ok & (q >= 0) & (q < W)
                # taps in the padding contribute nothing: their weights are not even read
                tap = tl.load(w_row + v * w_sv, mask=ok, other=0.0).to(ACC)
                xs = tl.load(x_row + (q * a_sw)[None, :], mask=c_ok & ok[None, :], other=0.0)
                acc += xs.to(ACC) * tap[None, :]

    y = y_ptr + n64 * b_sn + (chan * b_sc)[:, None] + (oz * b_sd + oi * b_sh + oj * b_sw)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=c_ok & p_ok[None, :])


# ---------------------------------------------------------------------------------------------- grad_input
@_autotuned3d
@triton.jit
def involution3d_bwd_input_kernel(
    gy_ptr, w_ptr, gx_ptr,
    G, CG, D, H, W, DO, HO, WO,
    a_sn, a_sc, a_sd, a_sh, a_sw,  # grad_input gx
    w_sn, w_sg, w_st, w_su, w_sv, w_sd, w_sh, w_sw,  # weight
    b_sn, b_sc, b_sd, b_sh, b_sw,  # grad_output gy
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    IN_PIX_CLASS, OUT_PIX_CLASS, LAYOUT_CLASS,  # the autotuner's key only
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gx (N, C, D, H, W): for each input voxel, the sum over the output voxels and taps that read it."""
    n64, g, zz, ri, qj, p_ok, offs_c = _volume_tile(G, tl.cdiv(CG, BLOCK_C), D * H * W, H, W, BLOCK_P, BLOCK_C)
    c_ok = (offs_c < CG)[:, None]
    chan = g * CG + offs_c
    gy_base = gy_ptr + n64 * b_sn + (chan * b_sc)[:, None]
    w_base = w_ptr + n64 * w_sn + g * w_sg
    dep0 = zz + PD  # output depth k reads this voxel at tap t when k * SD == dep0 - t * DD
    row0 = ri + PH
    col0 = qj + PW

    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for t in range(KD):
        k, k_ok = _reader_index(dep0 - t * DD, SD, DO)
        k_ok = k_ok & p_ok
        for u in range(KH):
            i, i_ok = _reader_index(row0 - u * DH, SH, HO)
            i_ok = k_ok & i_ok
            w_row = w_base + t * w_st + u * w_su + k * w_sd + i * w_sh
            gy_row = gy_base + (k * b_sd + i * b_sh)[None, :]
            for v in range(KW):
                j, j_ok = _reader_index(col0 - v * DW, SW, WO)
                ok = i_ok & j_ok
                tap = tl.load(w_row + v * w_sv + j * w_sw, mask=ok, other=0.0).to(ACC)
                gys = tl.load(gy_row + (j * b_sw)[None, :], mask=c_ok & ok[None, :], other=0.0)
                acc += gys.to(ACC) * tap[None, :]

    gx = gx_ptr + n64 * a_sn + (chan * a_sc)[:, None] + (zz * a_sd + ri * a_sh + qj * a_sw)[None, :]
    tl.store(gx, acc.to(gx_ptr.dtype.element_ty), mask=c_ok & p_ok[None, :])


# --------------------------------------------------------------------------------------------- grad_weight
@_autotuned3d
@triton.jit
def involution3d_bwd_weight_kernel(
    gy_ptr, x_ptr, gw_ptr,
    G, CG, D, H, W, DO, HO, WO,
    a_sn, a_sc, a_sd, a_sh, a_sw,  # input x
    w_sn, w_sg, w_st, w_su, w_sv, w_sd, w_sh, w_sw,  # grad_weight gw
    b_sn, b_sc, b_sd, b_sh, b_sw,  # grad_output gy
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    IN_PIX_CLASS, OUT_PIX_CLASS, LAYOUT_CLASS,  # the autotuner's key only
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gw (N, G, KD, KH, KW, DO, HO, WO): per tap and output voxel, the sum over the group's channels of gy * x.

    One program per (sample, group, voxel block), looping over the group's channels one by one in channel order
    (as the 2-D kernel: ``BLOCK_C`` only unrolls the loop, so the bits do not depend on the tuned tile)."""
    n64, g, oz, oi, oj, p_ok, _ = _volume_tile(G, 1, DO * HO * WO, HO, WO, BLOCK_P, BLOCK_C)
    x_base = x_ptr + n64 * a_sn
    gy_base = gy_ptr + n64 * b_sn + oz * b_sd + oi * b_sh + oj * b_sw
    gw_base = gw_ptr + n64 * w_sn + g * w_sg + oz * w_sd + oi * w_sh + oj * w_sw
    dep0 = oz * SD - PD
    row0 = oi * SH - PH
    col0 = oj * SW - PW

    for t in range(KD):
        z = dep0 + t * DD
        z_ok = p_ok & (z >= 0) & (z < D)
        for u in range(KH):
            r = row0 + u * DH
            r_ok = z_ok & (r >= 0) & (r < H)
            x_row = x_base + z * a_sd + r * a_sh
            for v in range(KW):
                q = col0 + v * DW
                ok = r_ok & (q >= 0) & (q < W)
                acc = _channel_dot(gy_base, x_row + q * a_sw, b_sc, a_sc, g, CG, ok, BLOCK_P, BLOCK_C, ACC)
                tl.store(gw_base + t * w_st + u * w_su + v * w_sv, acc.to(gw_ptr.dtype.element_ty), mask=p_ok)
