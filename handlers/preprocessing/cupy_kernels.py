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

def vector_source(groups: int = 1, streaming: bool = False) -> str:
    """CUDA source of the hand-written kernel: each thread turns `groups` x 4 neighbouring
    pixels (12 bytes each, read as three 32-bit words) into one float4 store per channel
    plane and group; `streaming` stores with __stcs (evict-first: the output is not read
    again by this kernel, so it need not stay in L2)."""
    store = "__stcs" if streaming else "_store"
    body = []
    for g in range(groups):
        body.append(f"""
        {{
            const long long t = base + {g};
            const unsigned int w0 = __ldg(src + 3 * t), w1 = __ldg(src + 3 * t + 1), w2 = __ldg(src + 3 * t + 2);
            // little-endian bytes: w0 = r0 g0 b0 r1, w1 = g1 b1 r2 g2, w2 = b2 r3 g3 b3
            const float r0 = (float)(w0 & 255u), g0 = (float)((w0 >> 8) & 255u), c0 = (float)((w0 >> 16) & 255u);
            const float r1 = (float)(w0 >> 24), g1 = (float)(w1 & 255u), c1 = (float)((w1 >> 8) & 255u);
            const float r2 = (float)((w1 >> 16) & 255u), g2 = (float)(w1 >> 24), c2 = (float)(w2 & 255u);
            const float r3 = (float)((w2 >> 8) & 255u), g3 = (float)((w2 >> 16) & 255u), c3 = (float)(w2 >> 24);
            float4* plane = dst + n * 3 * hw4 + q + {g};
            {store}(plane, make_float4(fmaf(r0, s0, b0), fmaf(r1, s0, b0), fmaf(r2, s0, b0), fmaf(r3, s0, b0)));
            {store}(plane + hw4, make_float4(fmaf(g0, s1, b1), fmaf(g1, s1, b1), fmaf(g2, s1, b1), fmaf(g3, s1, b1)));
            {store}(plane + 2 * hw4, make_float4(fmaf(c0, s2, b2), fmaf(c1, s2, b2), fmaf(c2, s2, b2), fmaf(c3, s2, b2)));
        }}""")
    return r"""
__device__ __forceinline__ void _store(float4* p, float4 v) { *p = v; }

extern "C" __global__ void nhwc_u8_to_nchw_f32(
        const unsigned int* __restrict__ src,   // N*H*W*3 bytes, as 32-bit words
        float4* __restrict__ dst,               // N*3*H*W floats, as float4
        const long long hw4,                    // H*W / 4
        const long long total,                  // N*H*W / (4*GROUPS): one thread per GROUPS*4 pixels
        const float s0, const float s1, const float s2,   // 1 / (255 * std)
        const float b0, const float b1, const float b2)   // -mean / std
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long task = (long long)blockIdx.x * blockDim.x + threadIdx.x; task < total; task += stride) {
        const long long base = task * GROUPS;                  // first group of 4 pixels
        const long long n = base / hw4, q = base - n * hw4;    // image, group within it
""".replace("GROUPS", str(groups)) + "".join(body) + """
    }
}
"""


# The variant AG-DS-CUPY-001 runs (benchmarks/fused_kernel_variants.py measured the others).
VECTOR_GROUPS, VECTOR_STREAMING = 1, False
_VECTOR_SOURCE = vector_source(VECTOR_GROUPS, VECTOR_STREAMING)

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
def _vector_kernel(groups: int = VECTOR_GROUPS, streaming: bool = VECTOR_STREAMING):
    import cupy
    return cupy.RawKernel(vector_source(groups, streaming), "nhwc_u8_to_nchw_f32")


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


def vectorized(batch, mean, std, out=None, threads: int = 256, groups: int = VECTOR_GROUPS,
               streaming: bool = VECTOR_STREAMING):
    """The hand-written kernel (see vector_source); `elementwise` when H*W is not a multiple
    of 4 x groups."""
    import cupy
    _check(batch)
    n, h, w, c = batch.shape
    if (h * w) % (4 * groups):
        return elementwise(batch, mean, std, out)
    if out is None:
        out = cupy.empty((n, c, h, w), dtype=cupy.float32)
    scale, bias = _constants(mean, std)
    total = n * h * w // (4 * groups)
    device = cupy.cuda.Device()
    blocks = min((total + threads - 1) // threads, device.attributes["MultiProcessorCount"] * 32)
    f32 = cupy.float32
    _vector_kernel(groups, streaming)((blocks,), (threads,), (batch, out, cupy.int64(h * w // 4), cupy.int64(total),
                                                              *(f32(v) for v in scale), *(f32(v) for v in bias)))
    return out


VARIANTS = {"numpy_style": numpy_style, "elementwise": elementwise, "vectorized": vectorized}
