"""The normalisation hot path (uint8 NHWC batch -> float32 NCHW, /255, per-channel mean and
std) as one pass over memory on the GPU, three ways, from plain to hand-written:

- `numpy_style`: the NumPy expression with xp = cupy (several kernels and temporaries);
- `elementwise`: one `cupy.ElementwiseKernel` over the output, reading its NHWC input byte
  by byte (the layout change and normalisation fused);
- `vectorized`: a `cupy.RawKernel` in which each thread turns 4 neighbouring pixels (12
  bytes, read as three 32-bit words) into one 16-byte float4 store per channel plane, so
  every load and store is a full-width, coalesced access. It needs H*W divisible by 4
  (224 x 224 is) and falls back to `elementwise` otherwise.

Bytes moved are the floor: N*H*W*C read once, 4x that written once.
"""
from __future__ import annotations

from functools import lru_cache

_VECTOR_SOURCE = r"""
extern "C" __global__ void nhwc_u8_to_nchw_f32_x4(
        const unsigned int* __restrict__ src,   // N*H*W*3 bytes, as 32-bit words
        float4* __restrict__ dst,               // N*3*H*W floats, as float4
        const long long hw4,                    // H*W / 4
        const long long total,                  // N * H*W / 4: one thread per 4 pixels
        const float s0, const float s1, const float s2,   // 1 / (255 * std)
        const float b0, const float b1, const float b2)   // -mean / std
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (; t < total; t += stride) {
        const long long n = t / hw4, q = t - n * hw4;      // image, group of 4 pixels in it
        const unsigned int w0 = __ldg(src + 3 * t), w1 = __ldg(src + 3 * t + 1), w2 = __ldg(src + 3 * t + 2);
        // little-endian bytes: w0 = r0 g0 b0 r1, w1 = g1 b1 r2 g2, w2 = b2 r3 g3 b3
        const float r0 = (float)(w0 & 255u),         g0 = (float)((w0 >> 8) & 255u), b0_ = (float)((w0 >> 16) & 255u);
        const float r1 = (float)(w0 >> 24),          g1 = (float)(w1 & 255u),        b1_ = (float)((w1 >> 8) & 255u);
        const float r2 = (float)((w1 >> 16) & 255u), g2 = (float)(w1 >> 24),         b2_ = (float)(w2 & 255u);
        const float r3 = (float)((w2 >> 8) & 255u),  g3 = (float)((w2 >> 16) & 255u), b3_ = (float)(w2 >> 24);
        float4* plane = dst + n * 3 * hw4 + q;
        plane[0]       = make_float4(fmaf(r0, s0, b0), fmaf(r1, s0, b0), fmaf(r2, s0, b0), fmaf(r3, s0, b0));
        plane[hw4]     = make_float4(fmaf(g0, s1, b1), fmaf(g1, s1, b1), fmaf(g2, s1, b1), fmaf(g3, s1, b1));
        plane[2 * hw4] = make_float4(fmaf(b0_, s2, b2), fmaf(b1_, s2, b2), fmaf(b2_, s2, b2), fmaf(b3_, s2, b2));
    }
}
"""

_ELEMENTWISE_BODY = """
    long long hw = (long long)h * w;
    long long n = i / (3 * hw), rest = i - n * 3 * hw;
    long long c = rest / hw, p = rest - c * hw;
    out = (float)src[(n * hw + p) * 3 + c] * scale[c] + bias[c];
"""


def _constants(mean, std):
    scale = [1.0 / (255.0 * s) for s in std]
    bias = [-m / s for m, s in zip(mean, std)]
    return scale, bias


@lru_cache(maxsize=None)
def _vector_kernel():
    import cupy
    return cupy.RawKernel(_VECTOR_SOURCE, "nhwc_u8_to_nchw_f32_x4")


@lru_cache(maxsize=None)
def _elementwise_kernel():
    import cupy
    return cupy.ElementwiseKernel("raw uint8 src, raw float32 scale, raw float32 bias, int64 h, int64 w",
                                  "float32 out", _ELEMENTWISE_BODY, "atlas_nhwc_u8_to_nchw_f32")


def _check(batch):
    if batch.dtype.name != "uint8" or batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"expected a uint8 (N, H, W, 3) batch, got {batch.dtype} {batch.shape}")
    if not batch.flags.c_contiguous:
        raise ValueError("the batch must be C-contiguous (NHWC as decoded)")


def numpy_style(batch, mean, std):
    import cupy
    m, s = cupy.asarray(mean, dtype=cupy.float32), cupy.asarray(std, dtype=cupy.float32)
    return cupy.ascontiguousarray(((batch.astype(cupy.float32) / 255.0 - m) / s).transpose(0, 3, 1, 2))


def elementwise(batch, mean, std, out=None):
    import cupy
    _check(batch)
    n, h, w, c = batch.shape
    scale, bias = (cupy.asarray(v, dtype=cupy.float32) for v in _constants(mean, std))
    if out is None:
        out = cupy.empty((n, c, h, w), dtype=cupy.float32)
    return _elementwise_kernel()(batch, scale, bias, h, w, out)


def vectorized(batch, mean, std, out=None, threads: int = 256):
    """The hand-written kernel (see the module's docstring); `elementwise` when H*W % 4 != 0."""
    import cupy
    _check(batch)
    n, h, w, c = batch.shape
    if (h * w) % 4:
        return elementwise(batch, mean, std, out)
    if out is None:
        out = cupy.empty((n, c, h, w), dtype=cupy.float32)
    scale, bias = _constants(mean, std)
    total = n * h * w // 4
    device = cupy.cuda.Device()
    blocks = min((total + threads - 1) // threads, device.attributes["MultiProcessorCount"] * 32)
    f32 = cupy.float32
    _vector_kernel()((blocks,), (threads,), (batch, out, cupy.int64(h * w // 4), cupy.int64(total),
                                             *(f32(v) for v in scale), *(f32(v) for v in bias)))
    return out


VARIANTS = {"numpy_style": numpy_style, "elementwise": elementwise, "vectorized": vectorized}
