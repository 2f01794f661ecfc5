"""The numpy twin of torch's CUDA generator (Philox4x32-10) against independently derived values.

No GPU is needed, and none has checked these results yet: the tests compare
:class:`CudaGenerator` with (1) the published Philox4x32-10 known-answer vectors of Random123
(Salmon et al. 2011, ``tests/kat_vectors``), (2) a scalar Philox written here from the paper's
definition with Python integers, (3) the layout of ATen's ``distribution_nullary_kernel``
spelled out element by element, and (4) the values AUTOMATIC1111's ``rng_philox.py`` publishes
for ``torch.randn((3, 4), device="cuda")`` after seed 0 (an independent numpy implementation
whose first four values are the widely quoted GPU output -0.9247, -0.4253, -2.6438, 0.1452).
``test_matches_torch_on_a_gpu`` compares with torch itself where a CUDA device exists.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from comfyc.runtime.noise import CudaGenerator, philox4x32_10
from comfyc.runtime.noise import _fma32 as fma32

MASK = 0xFFFFFFFF

# NOTE: Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter, key, expected.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK, MASK, MASK, MASK), (MASK, MASK), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# NOTE: AUTOMATIC1111 modules/rng_philox.py docstring, Generator(seed=0).randn((3, 4)).
A1111_SEED0 = np.array([
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
])


def _scalar_philox(counter: tuple[int, int, int, int], key: tuple[int, int]) -> list[int]:
    """Philox4x32-10 from the paper: 10 rounds of two 32x32->64 products, key bumped between."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        if r:
            k0 = (k0 + 0x9E3779B9) & MASK
            k1 = (k1 + 0xBB67AE85) & MASK
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
    return [c0, c1, c2, c3]


def _f32(value: Fraction | float) -> float:
    """Round an exact value to float32 (round to nearest, ties to even)."""
    return float(np.float32(float(value))) if not isinstance(value, Fraction) else \
        _round_fraction(value)


def _round_fraction(value: Fraction) -> float:
    """Correctly rounded float32 of an exact rational (via exact comparison with neighbours)."""
    guess = np.float32(float(value))  # within one float32 ulp
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess,
                  np.nextafter(guess, np.float32(np.inf))]
    best = min(candidates, key=lambda c: (abs(Fraction(float(c)) - value),
                                          int(np.float32(c).view(np.uint32)) & 1))
    return float(best)


def _normals_by_hand(seed: int, counter_x: int, thread: int) -> list[float]:
    """curand_normal4 for one thread and call, computed with Python scalars.

    u = fma(float(w0), 2**-32, 2**-33), v = fma(float(w1), C, C / 2) rounded once to float32
    (exact rationals here), s = sqrt(-2 log u) and (s sin v, s cos v), each float32 step rounded.
    """
    words = _scalar_philox((counter_x & MASK, counter_x >> 32, thread & MASK, thread >> 32),
                           (seed & MASK, seed >> 32))
    c_inv = Fraction(float(np.float32(2.3283064e-10)))
    c_2pi = Fraction(float(np.float32(np.float32(2.3283064e-10) * np.float32(6.2831855))))
    out: list[float] = []
    for a, b in ((words[0], words[1]), (words[2], words[3])):
        fa = Fraction(float(np.float32(a)))
        fb = Fraction(float(np.float32(b)))
        u = _round_fraction(fa * c_inv + c_inv / 2)
        v = _round_fraction(fb * c_2pi + c_2pi / 2)
        log_u = float(np.float32(math.log(u)))
        s = float(np.sqrt(np.float32(-2.0 * log_u)))
        sin_v = float(np.float32(math.sin(v)))
        cos_v = float(np.float32(math.cos(v)))
        out += [float(np.float32(sin_v * s)), float(np.float32(cos_v * s))]
    return out


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answer_vectors(counter: tuple[int, ...], key: tuple[int, int],
                                     expected: tuple[int, ...]) -> None:
    """philox4x32_10 reproduces Random123's published known-answer vectors."""
    got = philox4x32_10(np.array(counter, dtype=np.uint32).reshape(4, 1), key)[:, 0]
    assert [int(v) for v in got] == list(expected)


def test_philox_matches_the_scalar_definition() -> None:
    """The vectorised Philox equals the scalar definition on random counters and keys."""
    rng = np.random.default_rng(5)
    counters = rng.integers(0, 2**32, size=(4, 64), dtype=np.uint64).astype(np.uint32)
    for key in [(0, 0), (123, 0), (MASK, 7), (0xDEADBEEF, 0xCAFEBABE)]:
        got = philox4x32_10(counters, key)
        for j in range(counters.shape[1]):
            expected = _scalar_philox(tuple(int(v) for v in counters[:, j]), key)
            assert [int(v) for v in got[:, j]] == expected


def test_fma32_is_correctly_rounded() -> None:
    """_fma32 rounds a * b + c once (exact rationals as the oracle), ties included."""
    rng = np.random.default_rng(11)
    a = rng.integers(0, 2**32, size=2000, dtype=np.uint64).astype(np.float32)
    consts = [(np.float32(2.3283064e-10), np.float32(2.3283064e-10 / 2)),
              (np.float32(np.float32(2.3283064e-10) * np.float32(6.2831855)),
               np.float32(np.float32(2.3283064e-10) * np.float32(6.2831855) / np.float32(2)))]
    for b, c in consts:
        got = fma32(a, b, c)
        for x, y in zip(a[:400], got[:400], strict=True):
            exact = Fraction(float(x)) * Fraction(float(b)) + Fraction(float(c))
            assert float(y) == _round_fraction(exact)
    # NOTE: a constructed near-tie: (1 + 2**-23)(1 - 2**-24) + 2**-47 (1 + 2**-23) is
    # 1 + 2**-24 + 2**-70, just above the midpoint of two float32s. A float64 sum rounds it
    # onto the midpoint (and the cast to even, 1.0); the single rounding gives 1 + 2**-23.
    a1 = np.array([1.0 + 2.0**-23], np.float32)
    near_tie = fma32(a1, np.float32(1.0 - 2.0**-24), np.float32(2.0**-47 * (1.0 + 2.0**-23)))
    assert float(near_tie[0]) == 1.0 + 2.0**-23


def test_seed_zero_matches_published_values() -> None:
    """CudaGenerator(0).randn((3, 4)) agrees with AUTOMATIC1111's published values."""
    got = CudaGenerator(0).randn((3, 4))
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got, A1111_SEED0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 + 5, 2**63 + 11, 2**64 - 1])
def test_small_tensor_layout_by_hand(seed: int) -> None:
    """One thread per element: element t is the first normal of counter (offset/4, 0, t, 0)."""
    gen = CudaGenerator(seed)
    first = gen.randn((1, 4, 3, 5))  # 60 elements: one block, one call
    second = gen.randn((60,))
    assert gen.offset == 8
    for t in range(60):
        assert float(first.reshape(-1)[t]) == _normals_by_hand(seed, 0, t)[0]
        assert float(second[t]) == _normals_by_hand(seed, 1, t)[0]


def test_capped_grid_layout_by_hand() -> None:
    """A grid capped at 2 blocks: element k*4T + i*T + t is normal i of thread t's call k."""
    seed, blocks = 77, 2
    threads = 256 * blocks
    numel = 3 * 4 * threads + 700  # four calls per thread, the last one partly used
    gen = CudaGenerator(seed, max_blocks=blocks)
    gen.manual_seed(seed)
    gen.randn((5,))  # advances the offset by 4
    got = gen.randn((numel,))
    assert gen.offset == 4 + 4 * 4
    rng = np.random.default_rng(0)
    for li in [0, 1, threads - 1, threads, 2 * threads + 3, 4 * threads, 4 * threads + 511,
               12 * threads, numel - 1, *rng.integers(0, numel, 40).tolist()]:
        k, rest = divmod(li, 4 * threads)
        i, t = divmod(rest, threads)
        assert float(got[li]) == _normals_by_hand(seed, 1 + k, t)[i], li


def test_uncapped_grid_equals_a_large_cap() -> None:
    """max_blocks above ceil(numel / 256) changes nothing."""
    shape = (2, 4, 16, 16)
    a = CudaGenerator(9).randn(shape)
    b = CudaGenerator(9, max_blocks=10_000).randn(shape)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_sixty_four_bit_seed_and_reseed() -> None:
    """All 64 seed bits key Philox (unlike the CPU generator); manual_seed resets the offset."""
    a = CudaGenerator(5).randn((64,))
    b = CudaGenerator(2**32 + 5).randn((64,))
    assert not np.array_equal(a, b)
    gen = CudaGenerator(5)
    gen.randn((64,))
    assert np.array_equal(gen.manual_seed(5).randn((64,)), a)
    assert CudaGenerator(-1).seed == 2**64 - 1


def test_statistics_look_normal() -> None:
    """A large draw (capped grid, several calls per thread) has mean 0 and variance 1."""
    x = CudaGenerator(3, max_blocks=8).randn((200_000,)).astype(np.float64)
    assert abs(x.mean()) < 0.01 and abs(x.var() - 1.0) < 0.01
    assert np.isfinite(x).all()


def test_empty_and_bad_inputs() -> None:
    """An empty draw takes no offset; bad seeds, shapes and caps are refused."""
    gen = CudaGenerator(1)
    assert gen.randn((0, 4)).shape == (0, 4) and gen.offset == 0
    with pytest.raises(ValueError):
        CudaGenerator(2**64)
    with pytest.raises(TypeError):
        CudaGenerator(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        gen.randn((-1, 2))
    with pytest.raises(ValueError):
        CudaGenerator(1, max_blocks=0)


@pytest.mark.gpu
def test_matches_torch_on_a_gpu() -> None:
    """On an NVIDIA GPU: torch's CUDA randn equals CudaGenerator to about 1e-6 (its __sincosf).

    Run with ``pytest -m gpu tests/runtime/test_noise_cuda.py`` on a machine with CUDA torch.
    """
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    props = torch.cuda.get_device_properties(0)
    blocks = props.multi_processor_count * (props.max_threads_per_multi_processor // 256)
    for seed in [0, 1, 20251203, 2**32 + 12345, 2**63 + 7]:
        generator = torch.Generator(device="cuda").manual_seed(seed)
        ours = CudaGenerator(seed, max_blocks=blocks)
        for shape in [(3, 4), (1, 4, 8, 8), (2, 4, 64, 64), (1, 4, 128, 128), (4, 4, 128, 128)]:
            theirs = torch.randn(shape, device="cuda", generator=generator).cpu().numpy()
            got = ours.randn(shape)
            np.testing.assert_allclose(got, theirs, atol=4e-6, rtol=0)
            assert ours.offset == generator.get_offset()
