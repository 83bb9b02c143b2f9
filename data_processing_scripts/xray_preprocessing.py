"""Chest X-ray preprocessing, written once against an array module.

Every function takes its images first and the array module as `xp` (NumPy by default), so
the same code runs on the CPU (`xp=numpy`) and on the GPU (`xp=cupy`, with CuPy arrays).
AG-DS-CUPY-001 runs each function both ways on the same images, checks the results agree
and times them; a function that only works with NumPy is reported by name.

Images are 2-D uint8 arrays (H, W) unless a function says otherwise; batches are uint8
(N, H, W, C) as image libraries decode them.
"""
import math

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def window(image, center=128.0, width=200.0, xp=np):
    """Intensity windowing (window level/width): values in [center - width/2, center +
    width/2] mapped to [0, 1], the rest clipped."""
    low = center - width / 2.0
    return xp.clip((image.astype(xp.float32) - low) / width, 0.0, 1.0)


def minmax_normalize(image, xp=np):
    """Per-image min-max scaling to [0, 1] (a constant image becomes zeros)."""
    x = image.astype(xp.float32)
    low, high = x.min(), x.max()
    span = xp.maximum(high - low, xp.float32(1e-6))
    return (x - low) / span


def zscore_normalize(image, eps=1e-6, xp=np):
    """Zero mean, unit variance per image."""
    x = image.astype(xp.float32)
    return (x - x.mean()) / (x.std() + xp.float32(eps))


def gamma_correct(image, gamma=0.8, xp=np):
    """Gamma correction on the 0-1 scale: x ** gamma (gamma < 1 brightens the lungs)."""
    return xp.power(image.astype(xp.float32) / 255.0, xp.float32(gamma))


def histogram_equalize(image, xp=np):
    """Global histogram equalisation of a uint8 image through its cumulative histogram."""
    hist = xp.bincount(image.ravel(), minlength=256)
    cdf = xp.cumsum(hist)
    nonzero = cdf[cdf > 0]
    cdf_min = nonzero[0]
    total = cdf[-1]
    lut = xp.clip(xp.round((cdf - cdf_min) * 255.0 / xp.maximum(total - cdf_min, 1)), 0, 255).astype(xp.uint8)
    return lut[image]


def clahe(image, tiles=8, clip_limit=2.0, xp=np):
    """Contrast-limited adaptive histogram equalisation: a clipped histogram per tile (the
    excess spread evenly over all bins), each pixel mapped through the four nearest tiles'
    lookup tables, blended bilinearly. The image sides must be multiples of `tiles`."""
    h, w = image.shape
    th, tw = h // tiles, w // tiles
    if th * tiles != h or tw * tiles != w:
        raise ValueError(f"image {h}x{w} is not a multiple of {tiles} tiles")
    blocks = image.reshape(tiles, th, tiles, tw).transpose(0, 2, 1, 3).reshape(tiles * tiles, th * tw)
    offsets = (xp.arange(tiles * tiles) * 256)[:, None]
    hist = xp.bincount((blocks.astype(xp.int64) + offsets).ravel(), minlength=tiles * tiles * 256)
    hist = hist.reshape(tiles * tiles, 256).astype(xp.float32)
    limit = max(1.0, clip_limit * th * tw / 256.0)
    excess = xp.maximum(hist - limit, 0).sum(axis=1, keepdims=True)
    hist = xp.minimum(hist, limit) + excess / 256.0
    cdf = xp.cumsum(hist, axis=1)
    luts = (cdf - cdf[:, :1]) * 255.0 / xp.maximum(cdf[:, -1:] - cdf[:, :1], 1.0)
    luts = xp.clip(luts, 0, 255).reshape(tiles, tiles, 256)
    # tile coordinates of every pixel centre, between tile centres
    ty = (xp.arange(h, dtype=xp.float32) + 0.5) / th - 0.5
    tx = (xp.arange(w, dtype=xp.float32) + 0.5) / tw - 0.5
    y0 = xp.clip(xp.floor(ty), 0, tiles - 1).astype(xp.int64)
    x0 = xp.clip(xp.floor(tx), 0, tiles - 1).astype(xp.int64)
    y1, x1 = xp.minimum(y0 + 1, tiles - 1), xp.minimum(x0 + 1, tiles - 1)
    fy = xp.clip(ty - y0, 0, 1)[:, None]
    fx = xp.clip(tx - x0, 0, 1)[None, :]
    v = image.astype(xp.int64)
    top = luts[y0[:, None], x0[None, :], v] * (1 - fx) + luts[y0[:, None], x1[None, :], v] * fx
    bottom = luts[y1[:, None], x0[None, :], v] * (1 - fx) + luts[y1[:, None], x1[None, :], v] * fx
    return xp.clip(xp.round(top * (1 - fy) + bottom * fy), 0, 255).astype(xp.uint8)


def resize_bilinear(image, size=224, xp=np):
    """Bilinear resize to size x size (pixel centres aligned, no antialiasing), float32."""
    h, w = image.shape
    ys = xp.clip((xp.arange(size, dtype=xp.float32) + 0.5) * (h / size) - 0.5, 0, h - 1)
    xs = xp.clip((xp.arange(size, dtype=xp.float32) + 0.5) * (w / size) - 0.5, 0, w - 1)
    y0, x0 = xp.floor(ys).astype(xp.int64), xp.floor(xs).astype(xp.int64)
    y1, x1 = xp.minimum(y0 + 1, h - 1), xp.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    x = image.astype(xp.float32)
    top = x[y0[:, None], x0[None, :]] * (1 - fx) + x[y0[:, None], x1[None, :]] * fx
    bottom = x[y1[:, None], x0[None, :]] * (1 - fx) + x[y1[:, None], x1[None, :]] * fx
    return top * (1 - fy) + bottom * fy


def to_nchw_batch(batch, mean=IMAGENET_MEAN, std=IMAGENET_STD, xp=np):
    """uint8 (N, H, W, C) -> float32 (N, C, H, W), /255 and normalised per channel: the
    model's input."""
    m = xp.asarray(mean, dtype=xp.float32)
    s = xp.asarray(std, dtype=xp.float32)
    x = (batch.astype(xp.float32) / 255.0 - m) / s
    return xp.ascontiguousarray(x.transpose(0, 3, 1, 2))


def crop_to_content(image, threshold=10, xp=np):
    """Crop away dark borders (scanner margins): the rows and columns holding any pixel
    above `threshold`. Written as older scripts do it, one row and column at a time."""
    rows = [y for y in range(image.shape[0]) if int(image[y].max()) > threshold]
    cols = [x for x in range(image.shape[1]) if int(image[:, x].max()) > threshold]
    if not rows or not cols:
        return image
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def sigmoid_contrast(image, gain=10.0, cutoff=0.5, xp=np):
    """S-curve contrast around `cutoff` (0-1 scale), one pixel at a time through a Python
    function, as it was first written."""
    curve = np.vectorize(lambda v: 1.0 / (1.0 + math.exp(-gain * (v / 255.0 - cutoff))))
    return curve(image).astype(np.float32)
