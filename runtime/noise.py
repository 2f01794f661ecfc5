"""Seeded Gaussian noise, bit for bit what PyTorch's CPU generator gives, without torch.

Noise modes (:data:`NOISE_MODES`, :func:`check_noise_mode`): ComfyUI draws the initial noise on
the CPU everywhere, but the per-step noise of ancestral samplers (and the Brownian tree of the
``*_sde_gpu`` samplers) on the sampling device. ``cpu`` reproduces ComfyUI on a CPU since its
#11528 (seed + 1), ``cpu-legacy`` before it (the seed), ``cuda`` ComfyUI on an NVIDIA GPU
(:class:`CudaGenerator`, torch's Philox-based CUDA ``randn``; exact Philox words and layout,
normals to about 1e-6 because of the GPU's approximate ``__sincosf``; checked against torch
on an NVIDIA H200: within 4e-6, same generator offsets, ``tests/runtime/test_noise_cuda.py``).

ComfyUI draws the initial latent noise with ``torch.manual_seed(seed); torch.randn(shape)`` on the
CPU (``comfy/sample.py`` ``prepare_noise``), and ancestral samplers draw further noise from a CPU
``torch.Generator`` (``comfy/k_diffusion/sampling.py`` ``default_noise_sampler``). A user expects
the same image for the same seed, so the lean runtime reproduces that stream exactly.

What torch 2.x does on the CPU for ``randn`` of float32 (ATen ``DistributionTemplates.h``,
``cpu/DistributionKernels.cpp``, ``avx_mathfun.h``, ``TransformationHelper.h``):

* The engine is MT19937 seeded with the **low 32 bits** of the 64-bit seed (``init_genrand``), so
  ``manual_seed(2**32 + 5)`` equals ``manual_seed(5)``.
* ``numel >= 16`` (contiguous float32): one 32-bit draw per element,
  ``u = (r & 0xFFFFFF) * 2**-24``. Box-Muller per block of 16: ``u[0:8]`` give the radius
  ``sqrt(-2 log(1 - u))``, ``u[8:16]`` the angle ``2 pi u``; the cosines fill the first 8
  outputs, the sines the last 8. When
  ``numel % 16 != 0``, 16 fresh uniforms are drawn and the **last 16 outputs are recomputed**
  (overwriting part of the previous block).
* On x86 CPUs where ATen selects its AVX2 or AVX512 kernels, log/sin/cos are the Cephes polynomials
  of ``avx_mathfun.h`` (``log256_ps``, ``sincos256_ps``) in float32, and the compiler fused some
  multiply-adds into FMA instructions. This module emulates those FMAs (float64 product and sum,
  one rounding to float32), which is what makes the result bitwise equal.
* ``numel < 16``: the scalar path of ``normal_distribution<double>``: ``u = (r64 & (2**53 - 1)) *
  2**-53`` with ``r64 = hi << 32 | lo`` from two draws; ``u1`` gives the angle, ``u2`` the radius
  ``sqrt(-2 log1p(-u2))``; it returns ``r cos`` and caches ``r sin`` **in the generator** for the
  next scalar draw (the cache survives across calls and is cleared by ``manual_seed``).

Platform caveat: on CPUs where ATen runs its ``default`` kernels (x86 without AVX2, and - by the
ATen source, not verified on hardware - ARM builds such as Apple Silicon), tensors of 16 or more
elements use the platform's ``std::log/cos/sin`` in float32 instead of the Cephes polynomials.
Those results differ from this module (and from x86 AVX2 torch) by at most 1 ulp in about 1.5 % of
the elements. So "same seed, same noise" holds bit for bit against ComfyUI on x86 AVX2/AVX512
machines; against ComfyUI on ARM the noise agrees to about 2.4e-7 absolute. Tensors of fewer than
16 elements use double precision math and practically always agree everywhere.

:class:`BrownianTreeNoise` rebuilds torchsde's Brownian tree (the noise of ComfyUI's SDE
samplers) from the same pieces: its increments are bit-identical to torchsde's. The per-step
normalisation divides by ``sqrt(|sigma_next - sigma|)``; torch's float32 ``sqrt`` on the CPU is
not correctly rounded (about 18 % of values are 1 ulp off IEEE), so that quotient can differ from
ComfyUI's by 1 ulp.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_NOISE_MODE",
    "NOISE_MODES",
    "BrownianTreeNoise",
    "CudaGenerator",
    "TorchGenerator",
    "check_noise_mode",
    "philox4x32_10",
    "prepare_noise",
    "sampler_noise_generator",
]

#: Where ComfyUI's per-step sampler noise comes from (see :func:`check_noise_mode`).
NOISE_MODES: tuple[str, ...] = ("cpu", "cpu-legacy", "cuda")
#: The mode used when none is given: ComfyUI on a CPU, the one comfyc reproduces bit for bit and
#: checks against recordings of ComfyUI itself (``cuda`` matches torch on an NVIDIA H200 to 4e-6).
DEFAULT_NOISE_MODE = "cpu"

_MASK32 = 0xFFFFFFFF

#: Per thread: an MT19937 engine that short-lived generators (prepare_noise) run on.
_ENGINES = threading.local()

# NOTE: avx_mathfun.h constants, as float32 (the header stores them as float literals).
_F = np.float32
_ONE = _F(1.0)
_HALF = _F(0.5)
_MIN_NORM_POS = _F(1.17549435e-38)
_SQRTHF = _F(0.707106781186547524)
_LOG_P = tuple(
    _F(v)
    for v in (
        7.0376836292e-2,
        -1.1514610310e-1,
        1.1676998740e-1,
        -1.2420140846e-1,
        1.4249322787e-1,
        -1.6668057665e-1,
        2.0000714765e-1,
        -2.4999993993e-1,
        3.3333331174e-1,
    )
)
_LOG_Q1 = _F(-2.12194440e-4)
_LOG_Q2 = _F(0.693359375)
_FOPI = _F(1.27323954473516)
_MINUS_DP1 = _F(-0.78515625)
_MINUS_DP2 = _F(-2.4187564849853515625e-4)
_MINUS_DP3 = _F(-3.77489497744594108e-8)
_SINCOF = (_F(-1.9515295891e-4), _F(8.3321608736e-3), _F(-1.6666654611e-1))
_COSCOF = (_F(2.443315711809948e-005), _F(-1.388731625493765e-003), _F(4.166664568298827e-002))
_TWO_PI = _F(2.0 * math.pi)
_MINUS_TWO = _F(-2.0)


def _fma(a: np.ndarray | np.float32, b: np.ndarray | np.float32, c: np.ndarray | np.float32):
    """float32 fused multiply-add: exact product and sum in float64, one rounding to float32.

    The float32 product is exact in float64; the float64 sum can round, and the final cast rounds
    again. That double rounding differs from a true FMA only when the float64 sum lands exactly on
    a float32 tie, which did not happen in millions of tested elements.
    """
    out = np.multiply(a, b, dtype=np.float64)
    out += c
    return out.astype(np.float32)


def _log256(x: np.ndarray) -> np.ndarray:
    """``log256_ps`` of avx_mathfun.h for x in (0, 1], with ATen's FMA contractions."""
    x = np.maximum(x, _MIN_NORM_POS)
    bits = x.view(np.uint32)
    exponent = (bits >> np.uint32(23)).astype(np.int32) - np.int32(0x7F)
    x = ((bits & np.uint32(~0x7F800000 & _MASK32)) | np.uint32(0x3F000000)).view(np.float32)
    e = exponent.astype(np.float32) + _ONE
    mask = x < _SQRTHF
    tmp = np.where(mask, x, _F(0.0))
    x = x - _ONE
    e = e - np.where(mask, _ONE, _F(0.0))
    x = x + tmp
    z = x * x
    # NOTE: Horner steps y*x + p are contracted into FMAs by the compiler.
    y = _fma(_LOG_P[0], x, _LOG_P[1])
    for p in _LOG_P[2:]:
        y = _fma(y, x, p)
    y = y * x
    # NOTE: y*z + e*q1 is fused on the y*z side; e*q1 is rounded first.
    y = _fma(y, z, e * _LOG_Q1)
    y = y - z * _HALF
    x = x + y
    x = x + e * _LOG_Q2
    return x


def _sincos256(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sincos256_ps`` of avx_mathfun.h for x >= 0, with ATen's FMA contractions."""
    y = x * _FOPI
    j = y.astype(np.int32)  # cvttps: truncation
    j = (j + 1) & ~1
    y = j.astype(np.float32)
    swap_sin = (j & 4) != 0
    poly_mask = (j & 2) == 0
    # NOTE: the Cody-Waite reduction x - y*DP1 - y*DP2 - y*DP3 is fused into three FMAs.
    x = _fma(y, _MINUS_DP1, x)
    x = _fma(y, _MINUS_DP2, x)
    x = _fma(y, _MINUS_DP3, x)
    flip_cos = ((~(j - 2)) & 4) != 0
    z = x * x
    c = _fma(_COSCOF[0], z, _COSCOF[1])
    c = _fma(c, z, _COSCOF[2])
    c = c * z
    # NOTE: c*z - z/2 is fused (z*0.5 rounded first).
    c = _fma(c, z, -(z * _HALF))
    c = c + _ONE
    s = _fma(_SINCOF[0], z, _SINCOF[1])
    s = _fma(s, z, _SINCOF[2])
    s = s * z
    # NOTE: s*x + x is fused.
    s = _fma(s, x, x)
    sin = np.where(poly_mask, s, c)
    cos = np.where(poly_mask, c, s)
    sin = np.where(swap_sin, -sin, sin)
    cos = np.where(flip_cos, -cos, cos)
    return sin, cos


def _box_muller_16(u: np.ndarray) -> np.ndarray:
    """Normal samples from uniforms in blocks of 16 (``normal_fill_16_AVX2``); u: float32[n, 16]."""
    u1 = _ONE - u[:, :8]
    u2 = u[:, 8:]
    radius = np.sqrt(_MINUS_TWO * _log256(u1))
    sin, cos = _sincos256(_TWO_PI * u2)
    out = np.empty_like(u)
    out[:, :8] = radius * cos
    out[:, 8:] = radius * sin
    return out


class TorchGenerator:
    """A numpy twin of ``torch.Generator`` on the CPU, for ``randn`` of float32.

    ``TorchGenerator(seed).randn(shape)`` equals ``torch.manual_seed(seed); torch.randn(shape)``
    bit for bit on x86 AVX2/AVX512 (see the module docstring for other CPUs). Consecutive calls
    continue the stream exactly as consecutive ``torch.randn(..., generator=g)`` calls do.

    Args:
        seed: Any integer torch accepts, ``-2**63 <= seed < 2**64``. Only the low 32 bits seed
            the engine, as in torch.
    """

    __slots__ = ("_bitgen", "_cached_normal", "seed")

    def __init__(self, seed: int, *, engine: np.random.MT19937 | None = None) -> None:
        # NOTE: making an MT19937 costs 60-100 us (numpy seeds it through a SeedSequence
        # first); manual_seed overwrites its whole state, so a caller may lend one it owns.
        self._bitgen = engine if engine is not None else np.random.MT19937(0)
        self._cached_normal: float | None = None
        self.seed = 0
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> TorchGenerator:
        """Re-seed the generator, as ``torch.Generator.manual_seed`` (clears the cached sample).

        Args:
            seed: An integer in ``[-2**63, 2**64)``.

        Returns:
            self, so that ``TorchGenerator(0).manual_seed(5).randn(...)`` chains like torch.

        Raises:
            TypeError: if ``seed`` is not an integer.
            ValueError: if ``seed`` is outside the range torch accepts.
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(
                f"seed must be an integer, got {type(seed).__name__} {seed!r}; "
                "pass an int such as 42"
            )
        seed = int(seed)
        if not -(2**63) <= seed < 2**64:
            raise ValueError(
                f"seed {seed} is outside the range torch accepts, [-2**63, 2**64 - 1]; "
                "ComfyUI seeds are in [0, 2**64 - 1]"
            )
        self.seed = seed
        # NOTE: at::mt19937 init_with_uint32 is MT19937's init_genrand on the low 32 bits; the
        # first draw regenerates the state. numpy's legacy seeding of a scalar int is exactly
        # init_genrand (that is how RandomState(int) seeds); the bit-exactness tests guard it.
        legacy_seeding = getattr(self._bitgen, "_legacy_seeding", None)
        if legacy_seeding is not None:
            legacy_seeding(seed & _MASK32)
        else:  # pragma: no cover - numpy without the (private) fast path
            key = np.random.RandomState(seed & _MASK32).get_state()[1]
            self._bitgen.state = {
                "bit_generator": "MT19937",
                "state": {"key": key, "pos": 624},
            }
        self._cached_normal = None
        return self

    def _draw32(self, n: int) -> np.ndarray:
        """The next ``n`` 32-bit outputs of the engine, as uint32."""
        return self._bitgen.random_raw(n).astype(np.uint32)

    def _uniform_float(self, n: int) -> np.ndarray:
        """``uniform_real_distribution<float>(0, 1)``: 24 random bits per value."""
        r = self._draw32(n)
        return (r & np.uint32(0xFFFFFF)).astype(np.float32) * _F(2.0**-24)

    def _uniform_double(self) -> float:
        """``uniform_real_distribution<double>(0, 1)``: 53 bits of ``hi << 32 | lo``."""
        hi, lo = (int(v) for v in self._draw32(2))
        return ((hi << 32 | lo) & ((1 << 53) - 1)) * 2.0**-53

    def _normal_double(self) -> float:
        """One sample of ATen's ``normal_distribution<double>`` (with the generator cache)."""
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        u1 = self._uniform_double()
        u2 = self._uniform_double()
        # NOTE: math.* calls the platform libm, as ATen's ::log1p/::sin/::cos do.
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = r * math.sin(theta)
        return r * math.cos(theta)

    def randn_seeded(self, seeds: Sequence[int], shape: Sequence[int]) -> np.ndarray:
        """``[manual_seed(s).randn(shape) for s in seeds]`` stacked, ``[len(seeds), *shape]``.

        Each sample's uniforms are drawn per seed; their Box-Muller transform, elementwise
        over blocks of 16, runs once for all of them when ``shape`` holds a multiple of 16
        values (most of one ``randn``'s cost on small shapes is that transform's numpy
        calls). The generator is left seeded with the last seed, past its draw.
        """
        dims = tuple(int(v) for v in shape)
        numel = math.prod(dims)
        if numel < 16 or numel % 16 or not seeds:
            return np.stack([self.manual_seed(seed).randn(dims) for seed in seeds]) if seeds \
                else np.empty((0, *dims), dtype=np.float32)
        raw = np.empty((len(seeds), numel), dtype=np.uint64)
        for row, seed in enumerate(seeds):
            self.manual_seed(seed)
            raw[row] = self._bitgen.random_raw(numel)
        # NOTE: _uniform_float's arithmetic, over all rows at once.
        uniforms = (raw.astype(np.uint32) & np.uint32(0xFFFFFF)).astype(np.float32) * _F(2.0**-24)
        return _box_muller_16(uniforms.reshape(-1, 16)).reshape(len(seeds), *dims)

    def randn(self, shape: int | Sequence[int]) -> np.ndarray:
        """Standard normal float32 samples, as ``torch.randn(shape, generator=self)``.

        Args:
            shape: The output shape (an int or a sequence of ints).

        Returns:
            A C-contiguous float32 array of that shape.
        """
        dims = (
            (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        )
        if any(d < 0 for d in dims):
            raise ValueError(f"randn got a negative dimension in shape {dims}")
        numel = math.prod(dims)
        if numel < 16:
            values = [self._normal_double() for _ in range(numel)]
            return np.asarray(values, dtype=np.float64).astype(np.float32).reshape(dims)
        data = self._uniform_float(numel)
        full = numel - numel % 16
        out = np.empty(numel, dtype=np.float32)
        out[:full] = _box_muller_16(data[:full].reshape(-1, 16)).reshape(-1)
        if numel % 16:
            # NOTE: ATen draws 16 fresh uniforms and recomputes the last 16 outputs.
            tail = self._uniform_float(16).reshape(1, 16)
            out[numel - 16 :] = _box_muller_16(tail).reshape(-1)
        return out.reshape(dims)


# ----------------------------------------------------------------------------------------------
# torch's CUDA generator: Philox4x32-10 counters laid out as ATen's distribution kernels lay them.

_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_MASK64 = (1 << 64) - 1
# NOTE: curand_globals.h: CURAND_2POW32_INV (2.3283064e-10f, which is 2**-32 exactly) and
# CURAND_2POW32_INV_2PI (2.3283064e-10f * 6.2831855f, a float product rounded to float).
_CURAND_2POW32_INV = np.float32(2.3283064e-10)
_CURAND_2POW32_INV_2PI = np.float32(np.float32(2.3283064e-10) * np.float32(6.2831855))
# NOTE: DistributionTemplates.h: 256 threads a block, at most 4 normals per curand_normal4 call.
_CUDA_BLOCK = 256
_CUDA_UNROLL = 4


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 (Salmon et al. 2011, Random123; curand's ``curand_Philox4x32_10``).

    Args:
        counter: uint32 ``[4, n]``: n counters, words ``(x, y, z, w)`` (x the least significant).
        key: The two key words ``(k0, k1)``; torch and curand use the seed's low and high 32 bits.

    Returns:
        uint32 ``[4, n]``: the four output words of each counter.
    """
    c = np.asarray(counter, dtype=np.uint32).astype(np.uint64)
    x, y, z, w = c[0], c[1], c[2], c[3]
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    m0, m1, mask = np.uint64(_PHILOX_M0), np.uint64(_PHILOX_M1), np.uint64(_MASK32)
    shift = np.uint64(32)
    for round_index in range(10):
        if round_index:
            # NOTE: the key is bumped by the Weyl constants between rounds (mod 2**32).
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        p0 = x * m0  # the full 64-bit products: hi = p >> 32, lo = p & mask
        p1 = z * m1
        x, y, z, w = (
            (p1 >> shift) ^ y ^ np.uint64(k0),
            p1 & mask,
            (p0 >> shift) ^ w ^ np.uint64(k1),
            p0 & mask,
        )
    return np.stack([x, y, z, w]).astype(np.uint32)


def _fma32(a: np.ndarray, b: np.float32, c: np.float32) -> np.ndarray:
    """Correctly rounded float32 ``fma(a, b, c)`` (an FFMA instruction), for float32 inputs.

    ``a * b`` is exact in float64; the float64 sum is made round-to-odd (its error, from TwoSum,
    decides the last bit) so that the final rounding to float32 is the single correct rounding.
    """
    p = a.astype(np.float64) * np.float64(b)
    c64 = np.float64(c)
    s = p + c64
    bp = s - p
    err = (p - (s - bp)) + (c64 - bp)
    even = (s.view(np.uint64) & np.uint64(1)) == 0
    toward = np.where(err > 0, np.inf, -np.inf)
    s = np.where((err != 0) & even, np.nextafter(s, toward), s)
    return s.astype(np.float32)


def _box_muller_cuda(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """curand's ``_curand_box_muller(x, y)`` on the device: ``(s * sin v, s * cos v)``.

    ``u = x * 2**-32 + 2**-33`` and ``v = y * 2pi/2**32 + pi/2**32`` are single FFMAs (nvcc
    contracts them) after a round-to-nearest uint32 -> float conversion, reproduced exactly.
    ``s = sqrtf(-2 logf(u))``: ``sqrtf`` is correctly rounded (nvcc's default ``-prec-sqrt``);
    ``logf`` is CUDA's accurate one (at most 1 ulp off), taken here as the correctly rounded
    value. ``__sincosf`` is the hardware's approximate sine/cosine (absolute error about
    2**-21.4), whose exact bits are not documented; the correctly rounded values stand in.
    """
    u = _fma32(x.astype(np.float32), _CURAND_2POW32_INV, _F(_CURAND_2POW32_INV / _F(2)))
    v = _fma32(y.astype(np.float32), _CURAND_2POW32_INV_2PI, _F(_CURAND_2POW32_INV_2PI / _F(2)))
    log_u = np.log(u.astype(np.float64)).astype(np.float32)
    s = np.sqrt(_MINUS_TWO * log_u)
    v64 = v.astype(np.float64)
    return np.sin(v64).astype(np.float32) * s, np.cos(v64).astype(np.float32) * s


class CudaGenerator:
    """A numpy twin of ``torch.Generator(device="cuda")`` for ``randn`` of float32.

    What torch does (ATen ``native/cuda/DistributionTemplates.h`` ``distribution_nullary_kernel``
    and ``normal_and_transform``, ``cuda/CUDAGeneratorImpl.cpp`` ``philox_cuda_state``, curand's
    ``curand_kernel.h``/``curand_normal.h``/``curand_philox4x32_x.h``):

    * The generator holds the full 64-bit seed and a Philox offset, 0 after ``manual_seed``.
    * ``randn`` of ``numel`` elements launches 256-thread blocks, ``grid = min(ceil(numel /
      256), SMs * (max threads per SM // 256))``; thread ``t`` of ``T = 256 * grid`` runs
      ``curand_init(seed, t, offset)``: key ``(seed_lo, seed_hi)``, counter ``(offset / 4, 0,
      t_lo, t_hi)``. Its k-th ``curand_normal4`` call uses counter ``x = offset / 4 + k`` and
      turns the four Philox words into two Box-Muller pairs ``(w0, w1)``, ``(w2, w3)``, giving
      ``(s sin, s cos)`` each. Element ``k * 4T + i * T + t`` takes the i-th of those four
      values (the grid-stride loop unrolled 4 times). When ``grid`` covers ``numel`` (every
      element its own thread) only the first value of each call is used: element ``t`` is
      ``sqrt(-2 log u(w0)) * sin v(w1)`` of counter ``(offset / 4, 0, t, 0)``.
    * Afterwards the offset grows by ``4 * ceil(numel / 4T)`` (``calc_execution_policy``).

    The grid depends on the GPU only when ``numel > 256 * SMs * (max threads per SM // 256)``
    (e.g. above 196,608 elements on an RTX 4090, 43,008 on an RTX 3060: an SDXL 1024x1024
    latent has 65,536); pass ``max_blocks`` for such a GPU. The Philox words, their layout and
    the uniforms are exact; the normals agree with the GPU's to about 1e-6 absolute, because
    the device's ``__sincosf`` is a hardware approximation (see :func:`_box_muller_cuda`).
    Checked on an NVIDIA H200 (torch 2.11+cu130, 2026-12-04): five seeds, shapes up to
    262,144 elements, values within 4e-6 and the same offsets
    (``tests/runtime/test_noise_cuda.py::test_matches_torch_on_a_gpu``).

    Args:
        seed: Any integer torch accepts, ``-2**63 <= seed < 2**64`` (all 64 bits count).
        max_blocks: ``multiProcessorCount * (maxThreadsPerMultiProcessor // 256)`` of the GPU
            to imitate; None for one large enough for every tensor drawn.
    """

    __slots__ = ("_offset", "max_blocks", "seed")

    def __init__(self, seed: int, max_blocks: int | None = None) -> None:
        if max_blocks is not None and int(max_blocks) < 1:
            raise ValueError(f"max_blocks must be at least 1, got {max_blocks}")
        self.max_blocks = None if max_blocks is None else int(max_blocks)
        self.seed = 0
        self._offset = 0
        self.manual_seed(seed)

    @property
    def offset(self) -> int:
        """torch's ``philox_offset_per_thread`` (``get_offset()``): a multiple of 4."""
        return self._offset

    def manual_seed(self, seed: int) -> CudaGenerator:
        """Re-seed (``torch.Generator("cuda").manual_seed``): the offset goes back to 0.

        Args:
            seed: An integer in ``[-2**63, 2**64)``; a negative one is read as its 64-bit
                two's complement, as torch does.

        Returns:
            self.

        Raises:
            TypeError: if ``seed`` is not an integer.
            ValueError: if ``seed`` is outside the range torch accepts.
        """
        TorchGenerator(0).manual_seed(seed)  # the same checks and messages as the CPU twin
        self.seed = int(seed) & _MASK64
        self._offset = 0
        return self

    def randn(self, shape: int | Sequence[int]) -> np.ndarray:
        """Standard normal float32 samples, as ``torch.randn(shape, device="cuda", generator=g)``.

        Args:
            shape: The output shape (an int or a sequence of ints).

        Returns:
            A C-contiguous float32 array of that shape.
        """
        dims = (
            (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        )
        if any(d < 0 for d in dims):
            raise ValueError(f"randn got a negative dimension in shape {dims}")
        numel = math.prod(dims)
        out = np.empty(numel, dtype=np.float32)
        if numel == 0:
            # NOTE: the kernel returns before taking an offset from the generator.
            return out.reshape(dims)
        blocks = -(-numel // _CUDA_BLOCK)
        if self.max_blocks is not None:
            blocks = min(blocks, self.max_blocks)
        threads = _CUDA_BLOCK * blocks
        per_call = threads * _CUDA_UNROLL
        calls = (numel - 1) // per_call + 1
        base = self._offset // 4
        self._offset += 4 * calls
        thread = np.arange(threads, dtype=np.uint64)
        counter = np.empty((4, threads), dtype=np.uint32)
        counter[2] = (thread & np.uint64(_MASK32)).astype(np.uint32)
        counter[3] = (thread >> np.uint64(32)).astype(np.uint32)
        key = (self.seed & _MASK32, self.seed >> 32)
        for k in range(calls):
            start = k * per_call
            # NOTE: only the values whose element exists are computed; with one call covering
            # the tensor (the usual case) that is the first Box-Muller pair's sine alone.
            used = min(_CUDA_UNROLL, -(-(numel - start) // threads))
            # NOTE: counter words x, y hold the 64-bit call position (z, w the thread).
            position = (base + k) & _MASK64
            counter[0] = position & _MASK32
            counter[1] = (position >> 32) & _MASK32
            words = philox4x32_10(counter, key)
            values: list[np.ndarray] = []
            for pair in range((used + 1) // 2):
                sin, cos = _box_muller_cuda(words[2 * pair], words[2 * pair + 1])
                values += [sin, cos]
            for i in range(used):
                lo = start + i * threads
                hi = min(lo + threads, numel)
                out[lo:hi] = values[i][: hi - lo]
        return out.reshape(dims)


def check_noise_mode(mode: str) -> str:
    """Validate a noise mode: where ComfyUI's sampler noise (beyond the initial noise) comes from.

    * ``cpu``: ComfyUI sampling on a CPU (``--cpu``) since its pull request #11528: ancestral
      noise (``default_noise_sampler``) from a CPU ``torch.Generator`` seeded ``seed + 1``.
    * ``cpu-legacy``: ComfyUI on a CPU before #11528 (e.g. 0.3.64): the same, seeded ``seed``.
    * ``cuda``: ComfyUI on an NVIDIA GPU: ancestral noise from torch's CUDA generator seeded
      ``seed`` (:class:`CudaGenerator`), and the Brownian trees of the ``*_sde_gpu`` samplers
      draw from it too (the plain SDE samplers keep their tree on the CPU on every device).

    The initial latent noise is the CPU generator's in every mode, as in ComfyUI.

    Args:
        mode: One of :data:`NOISE_MODES`.

    Returns:
        The mode.

    Raises:
        ValueError: for any other value.
    """
    if mode not in NOISE_MODES:
        raise ValueError(
            f"unknown noise mode {mode!r}; expected one of {', '.join(NOISE_MODES)} (cpu: "
            "ComfyUI on a CPU, cpu-legacy: ComfyUI on a CPU before its #11528, cuda: ComfyUI "
            "on an NVIDIA GPU)"
        )
    return mode


def sampler_noise_generator(mode: str, seed: int) -> TorchGenerator | CudaGenerator:
    """The generator of ComfyUI's ``default_noise_sampler(x, seed)`` in noise mode ``mode``.

    Each draw is ``generator.randn(x.shape)``.

    Args:
        mode: One of :data:`NOISE_MODES`.
        seed: The sampler seed (``extra_args["seed"]``).

    Returns:
        A :class:`TorchGenerator` (``cpu``: seeded ``seed + 1``; ``cpu-legacy``: ``seed``) or a
        :class:`CudaGenerator` seeded ``seed`` (``cuda``).
    """
    check_noise_mode(mode)
    if mode == "cuda":
        return CudaGenerator(seed)
    if mode == "cpu":
        # NOTE: torch would reject seed + 1 == 2**64; only its low 32 bits matter anyway.
        return TorchGenerator((int(seed) + 1) & _MASK64)
    return TorchGenerator(seed)


def prepare_noise(
    shape: Sequence[int], seed: int, batch_index: Sequence[int] | None = None
) -> np.ndarray:
    """The initial latent noise ComfyUI uses for ``seed`` (``comfy/sample.py`` ``prepare_noise``).

    Without ``batch_index``, one ``randn`` call covers the whole batch, so image ``k`` of a batch
    depends on the batch layout. With ``batch_index`` (set by LatentFromBatch / RepeatLatentBatch),
    one ``[1, ...]`` sample is drawn per index ``0..max(batch_index)`` in order and the requested
    ones are picked, so a sliced item gets the noise it had in the full batch.

    Args:
        shape: Latent shape ``[B, C, H, W]``.
        seed: The sampler seed, ``0 <= seed < 2**64``.
        batch_index: Optional batch indices, one per item of the batch.

    Returns:
        float32 noise of ``shape``.
    """
    dims = tuple(int(s) for s in shape)
    # NOTE: the generator lives only inside this call, so it runs on this thread's own engine
    # (re-seeded completely) instead of a new one per image.
    engine = getattr(_ENGINES, "mt19937", None)
    if engine is None:
        engine = _ENGINES.mt19937 = np.random.MT19937(0)
    generator = TorchGenerator(seed, engine=engine)
    if batch_index is None:
        return generator.randn(dims)
    indices = [int(i) for i in batch_index]
    if len(indices) != dims[0]:
        raise ValueError(
            f"batch_index has {len(indices)} entries but the latent batch is {dims[0]}; "
            "give one index per latent in the batch"
        )
    if any(i < 0 for i in indices):
        raise ValueError(f"batch_index must not be negative, got {indices}")
    item_shape = (1, *dims[1:])
    # NOTE: ComfyUI draws for every index up to the largest one, keeping only the used ones.
    wanted = set(indices)
    drawn: dict[int, np.ndarray] = {}
    for i in range(max(indices) + 1):
        sample = generator.randn(item_shape)
        if i in wanted:
            drawn[i] = sample
    return np.concatenate([drawn[i] for i in indices], axis=0)


class BrownianTreeNoise:
    """ComfyUI's Brownian-tree noise for SDE samplers, without torch.

    Reproduces ``comfy/k_diffusion/sampling.py`` ``BrownianTreeNoiseSampler(x, sigma_min,
    sigma_max, seed=seed, cpu=True)``, which wraps ``torchsde.BrownianTree(t0=sigma_min,
    w0=zeros_like(x), t1=sigma_max, entropy=seed)`` (tol 1e-6, pool_size 24, a dyadic
    "halfway" tree). The facts it rests on (torchsde 0.2 ``brownian_interval.py``):

    * Times are rounded to 6 decimals (``round(t, 6)``); every node splits at the rounded midpoint
      of its interval, so a query ``[ta, tb]`` is the sum, left to right, of the increments of the
      maximal dyadic nodes that tile it.
    * The root increment is ``randn(seed_W) * sqrt(t1 - t0)``, with seeds from
      ``numpy.random.SeedSequence(entropy=seed, pool_size=24).generate_state(3)``; a node with
      spawn key ``k`` at depth ``d`` draws ``generate_state(4)`` of
      ``SeedSequence(entropy, spawn_key=(k, d), pool_size=24)``; its children have keys ``2k``
      (left) and ``2k + 1`` (right) at depth ``d + 1``.
    * A split is a Brownian bridge: ``left = l * W / h + sqrt(l * r / h) * randn(seed_W of the
      node)``, ``right = W - left`` (float32 tensor arithmetic with Python-float coefficients).
    * Each ``randn`` is ``torch.Generator().manual_seed(seed)`` then ``randn(shape)`` on the CPU,
      which :class:`TorchGenerator` reproduces bit for bit.

    Calling it with ``(sigma, sigma_next)`` returns ``W(sigma_next, sigma) * sign /
    sqrt(|sigma_next - sigma|)``, a standard normal sample, as ComfyUI's noise sampler does.

    ``device="cuda"`` is the tree of the ``*_sde_gpu`` samplers on an NVIDIA GPU
    (``cpu=False``): torchsde then draws every ``randn`` on the tensor's device, that is from a
    CUDA generator (:class:`CudaGenerator`) seeded with the same seeds; the tree's arithmetic
    (float32 products and sums, one kernel each) rounds the same on both devices.

    Args:
        shape: Latent shape (the noise shape).
        sigma_min: Smallest positive sigma of the schedule.
        sigma_max: Largest sigma of the schedule.
        seed: The sampler seed (the tree's entropy).
        device: ``"cpu"`` (torch's CPU generator) or ``"cuda"`` (torch's CUDA generator).
    """

    __slots__ = (
        "_cache",
        "_drawn",
        "_end",
        "_entropy",
        "_generator",
        "_root_w",
        "_seeds",
        "_shape",
        "_start",
    )

    _POOL_SIZE = 24
    _NDIGITS = 6
    _CACHE_SIZE = 128

    def __init__(
        self,
        shape: Sequence[int],
        sigma_min: float,
        sigma_max: float,
        seed: int,
        device: str = "cpu",
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise ValueError(f"Brownian tree device must be 'cpu' or 'cuda', got {device!r}")
        self._shape = tuple(int(v) for v in shape)
        t0 = float(np.float32(sigma_min))
        t1 = float(np.float32(sigma_max))
        # NOTE: torchsde accepts t0 == t1 (a one-step schedule [sigma_max, 0] builds such a tree
        # in ComfyUI's SDE samplers, which then never query it); every increment is then 0.
        if not t0 <= t1:
            raise ValueError(
                f"Brownian tree needs sigma_min <= sigma_max, got {sigma_min} and {sigma_max}"
            )
        if int(seed) < 0:
            raise ValueError(f"Brownian tree entropy (the seed) must be >= 0, got {seed}")
        self._entropy = int(seed)
        self._start = round(t0, self._NDIGITS)
        self._end = round(t1, self._NDIGITS)
        root_seed = np.random.SeedSequence(
            entropy=self._entropy, pool_size=self._POOL_SIZE
        ).generate_state(3)[0]
        # NOTE: torchsde draws each randn from a fresh torch.Generator; reseeding one is the same.
        self._generator: TorchGenerator | CudaGenerator = (
            CudaGenerator(int(root_seed)) if device == "cuda" else TorchGenerator(int(root_seed))
        )
        self._root_w = self._generator.randn(self._shape) * np.float32(math.sqrt(t1 - t0))
        self._seeds: dict[tuple[int, int], int] = {}
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        #: The split noises a query needs, drawn together before it (see _draw_splits).
        self._drawn: dict[tuple[int, int], np.ndarray] = {}

    def _node_seed(self, key: int, depth: int) -> int:
        """The W seed a node uses to split itself (its first generate_state(4) word)."""
        found = self._seeds.get((key, depth))
        if found is None:
            sequence = np.random.SeedSequence(
                entropy=self._entropy, spawn_key=(key, depth), pool_size=self._POOL_SIZE
            )
            found = int(sequence.generate_state(4)[0])
            self._seeds[(key, depth)] = found
        return found

    def _midpoint(self, start: float, end: float) -> float:
        return round(0.5 * (end + start), self._NDIGITS)

    def _increment(self, path: tuple[tuple[float, float, int, int], ...]) -> np.ndarray:
        """W of the last node of ``path`` (root first; entries (start, end, key, depth))."""
        _, _, key, depth = path[-1]
        if depth == 0:
            return self._root_w
        cached = self._cache.get((key, depth))
        if cached is not None:
            self._cache.move_to_end((key, depth))
            return cached
        p_start, p_end, p_key, p_depth = path[-2]
        parent_w = self._increment(path[:-1])
        mid = self._midpoint(p_start, p_end)
        h_reciprocal = 1 / (p_end - p_start)
        left_diff = mid - p_start
        right_diff = p_end - mid
        noise = self._drawn.get((p_key, p_depth))
        if noise is None:
            noise = self._generator.manual_seed(self._node_seed(p_key, p_depth)).randn(
                self._shape)
        mean = np.float32(left_diff) * parent_w * np.float32(h_reciprocal)
        left_w = mean + np.float32(math.sqrt(left_diff * right_diff * h_reciprocal)) * noise
        out = left_w if key % 2 == 0 else parent_w - left_w
        self._cache[(key, depth)] = out
        if len(self._cache) > self._CACHE_SIZE:
            self._cache.popitem(last=False)
        return out

    def _tiles(self, ta: float, tb: float) -> list[tuple[tuple[float, float, int, int], ...]]:
        """The paths (root first) of the maximal dyadic nodes that tile ``[ta, tb]`` after
        torchsde's clamping and rounding; empty when the interval is (also when its ends
        round to the same time, which used to recurse without end)."""
        ta = min(max(ta, self._start), self._end)
        tb = min(max(tb, self._start), self._end)
        if ta == tb:
            return []
        ta, tb = round(ta, self._NDIGITS), round(tb, self._NDIGITS)
        if ta >= tb:  # equal once rounded (closer than the tree's 1e-6): no increment
            return []
        tiles: list[tuple[tuple[float, float, int, int], ...]] = []
        self._tile(((self._start, self._end, 0, 0),), ta, tb, tiles)
        return tiles

    def _draw_splits(self, tiles: list[tuple[tuple[float, float, int, int], ...]]) -> None:
        """Draw, in one :meth:`TorchGenerator.randn_seeded` call, the noise of every split
        the tiles' increments will make (a node's split serves both its children): the
        nodes from each tile up to the first one cached. A query spans about 20-40 splits;
        drawn one by one they were most of an SDE sampler's time on a small latent."""
        if not isinstance(self._generator, TorchGenerator):
            return
        needed: dict[tuple[int, int], None] = {}
        for path in tiles:
            for index in range(len(path) - 1, 0, -1):
                _, _, key, depth = path[index]
                if (key, depth) in self._cache:
                    break
                _, _, p_key, p_depth = path[index - 1]
                needed[(p_key, p_depth)] = None
        splits = [split for split in needed if split not in self._drawn]
        if len(splits) > 1:
            seeds = [self._node_seed(key, depth) for key, depth in splits]
            for split, noise in zip(splits, self._generator.randn_seeded(seeds, self._shape),
                                    strict=True):
                self._drawn[split] = noise

    def _tile(
        self,
        path: tuple[tuple[float, float, int, int], ...],
        ta: float,
        tb: float,
        out: list[tuple[tuple[float, float, int, int], ...]],
    ) -> None:
        start, end, key, depth = path[-1]
        if ta == start and tb == end:
            out.append(path)
            return
        mid = self._midpoint(start, end)
        left = (start, mid, 2 * key, depth + 1)
        right = (mid, end, 2 * key + 1, depth + 1)
        if tb <= mid:
            self._tile((*path, left), ta, tb, out)
        elif ta >= mid:
            self._tile((*path, right), ta, tb, out)
        else:
            self._tile((*path, left), ta, mid, out)
            self._tile((*path, right), mid, tb, out)

    def increment(self, ta: float, tb: float) -> np.ndarray:
        """The Brownian increment ``W(tb) - W(ta)`` for ``ta <= tb`` (``BrownianTree(ta, tb)``)."""
        # NOTE: torchsde clamps (unrounded) query times to the (rounded) interval, then rounds.
        tiles = self._tiles(float(ta), float(tb))
        if not tiles:
            return np.zeros(self._shape, dtype=np.float32)
        self._draw_splits(tiles)
        try:
            w = self._increment(tiles[0])
            for tile in tiles[1:]:
                w = w + self._increment(tile)
        finally:
            self._drawn.clear()
        return w

    def __call__(self, sigma: float, sigma_next: float) -> np.ndarray:
        """Standard normal noise for the step ``sigma -> sigma_next``.

        Args:
            sigma: Current sigma.
            sigma_next: Next sigma.

        Returns:
            float32 noise of the latent shape.
        """
        a = float(np.float32(sigma))
        b = float(np.float32(sigma_next))
        lo, hi, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        w = self.increment(lo, hi)
        if sign < 0:
            w = -w
        denom = np.float32(math.sqrt(float(np.float32(abs(float(np.float32(b - a)))))))
        # NOTE: sigma == sigma_next gives 0 / 0 = nan, as ComfyUI's noise sampler does.
        with np.errstate(divide="ignore", invalid="ignore"):
            return w / denom
