"""The numpy torch-generator twin against torch itself (bit for bit) and the Brownian tree."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from comfyc.runtime.noise import BrownianTreeNoise, TorchGenerator, prepare_noise

SEEDS = [0, 1, 42, 2**32 + 5, 2**63 - 1, 2**64 - 1]
SHAPES = [(3,), (15,), (16,), (17,), (1, 4, 7, 9), (1, 4, 13, 17), (2, 4, 64, 64)]


def _torch_randn(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    torch.manual_seed(seed)
    return torch.randn(shape).numpy()


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and bool((a.view(np.uint32) == b.view(np.uint32)).all())
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("seed", SEEDS)
def test_randn_bitwise_equals_torch(seed: int, shape: tuple[int, ...]) -> None:
    """TorchGenerator(seed).randn(shape) == torch.manual_seed(seed); torch.randn(shape)."""
    assert _same_bits(TorchGenerator(seed).randn(shape), _torch_randn(seed, shape))


def test_seed_uses_low_32_bits() -> None:
    """Seeds equal modulo 2**32 give the same stream, as in torch."""
    a = TorchGenerator(5).randn((1, 4, 8, 8))
    assert _same_bits(a, TorchGenerator(2**32 + 5).randn((1, 4, 8, 8)))


def test_consecutive_draws_continue_the_stream() -> None:
    """Repeated randn calls match repeated torch.randn calls on one torch.Generator.

    Mixes the scalar path (< 16 elements, whose cached second sample survives across calls) and
    the vectorised path (with and without the recomputed tail).
    """
    shapes = [(3,), (1, 4, 8, 8), (5,), (17,), (1,), (2,), (33,), (1, 4, 5, 3), (7,)]
    ours = TorchGenerator(7)
    theirs = torch.Generator().manual_seed(7)
    for shape in shapes:
        assert _same_bits(ours.randn(shape), torch.randn(shape, generator=theirs).numpy()), shape


def test_manual_seed_resets_cached_sample() -> None:
    """manual_seed clears the cached scalar sample, as torch's does."""
    ours = TorchGenerator(3)
    ours.randn((3,))
    theirs = torch.Generator().manual_seed(3)
    torch.randn((3,), generator=theirs)
    ours.manual_seed(11)
    theirs.manual_seed(11)
    assert _same_bits(ours.randn((5,)), torch.randn((5,), generator=theirs).numpy())


def test_zero_sized_and_scalar_shapes() -> None:
    """Empty and 0-d shapes behave like torch's."""
    assert TorchGenerator(0).randn((0, 4)).shape == (0, 4)
    assert _same_bits(TorchGenerator(9).randn(()), _torch_randn(9, ()))
    assert _same_bits(TorchGenerator(9).randn(4), _torch_randn(9, (4,)))


def test_bad_seeds_are_rejected() -> None:
    """Seeds torch would reject raise a clear error."""
    with pytest.raises(ValueError, match="range torch accepts"):
        TorchGenerator(2**64)
    with pytest.raises(TypeError, match="integer"):
        TorchGenerator(1.5)  # type: ignore[arg-type]


def test_randn_is_fast() -> None:
    """A (1, 4, 128, 128) latent draws in a few milliseconds (generous bound for CI)."""
    TorchGenerator(1).randn((1, 4, 128, 128))
    start = time.perf_counter()
    for seed in range(5):
        TorchGenerator(seed).randn((1, 4, 128, 128))
    assert (time.perf_counter() - start) / 5 < 0.05


def test_prepare_noise_whole_batch() -> None:
    """Without batch_index, one randn covers the whole batch (comfy/sample.py)."""
    assert _same_bits(prepare_noise((2, 4, 8, 8), 99), _torch_randn(99, (2, 4, 8, 8)))


def test_prepare_noise_batch_index() -> None:
    """With batch_index, one [1, ...] draw per index 0..max and the requested ones picked."""
    torch.manual_seed(123)
    draws = [torch.randn((1, 4, 6, 5)).numpy() for _ in range(4)]
    expected = np.concatenate([draws[3], draws[1], draws[3]], axis=0)
    assert _same_bits(prepare_noise((3, 4, 6, 5), 123, batch_index=[3, 1, 3]), expected)


def test_prepare_noise_batch_index_must_match_batch() -> None:
    """A batch_index of the wrong length is an error that says what to do."""
    with pytest.raises(ValueError, match="one index per latent"):
        prepare_noise((2, 4, 8, 8), 0, batch_index=[0])


@pytest.mark.parametrize("seed", [0, 42, 2**40 + 3])
def test_brownian_tree_matches_torchsde(seed: int) -> None:
    """BrownianTreeNoise increments equal torchsde.BrownianTree's bit for bit.

    Queries include the schedule points, their midpoints, spans covering many dyadic nodes, and
    times outside the interval (clamped, as torchsde does with a warning).
    """
    torchsde = pytest.importorskip("torchsde")
    shape = (1, 4, 8, 8)
    s_min, s_max = 0.0291675, 14.614643
    tree = torchsde.BrownianTree(
        torch.tensor(s_min), torch.zeros(shape), torch.tensor(s_max), entropy=seed
    )
    ours = BrownianTreeNoise(shape, s_min, s_max, seed)
    queries = [(9.1, 14.614643), (0.03, 0.5), (1.0, 2.0), (3.3, 7.7), (0.5, 14.0), (0.0, 20.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in queries:
            ta, tb = torch.tensor(a), torch.tensor(b)
            expected = tree(ta, tb).numpy()
            got = ours.increment(float(ta), float(tb))
            assert _same_bits(got, expected), (a, b)


def test_brownian_noise_sampler_normalises() -> None:
    """The sampler call returns -W(b, a) / sqrt(|b - a|) for a step a -> b (a > b)."""
    ours = BrownianTreeNoise((1, 4, 4, 4), 0.03, 14.6, 5)
    w = ours.increment(2.0, 3.0)
    np.testing.assert_allclose(ours(3.0, 2.0), -w / np.float32(1.0), rtol=0, atol=0)


def test_runtime_modules_do_not_import_torch() -> None:
    """noise, schedules, samplers and cfg import and run with torch unimportable."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'diffusers', 'transformers', 'scipy'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from comfyc.runtime import cfg, noise, samplers, schedules\n"
        "unet = lambda x, t, c: x * np.float32(0.5)\n"
        "ctx = np.zeros((1, 77, 8), np.float32)\n"
        "den = cfg.make_denoiser(unet, [{'cond': ctx}], [{'cond': ctx}], 7.0, (1, 4, 8, 8))\n"
        "sig = schedules.ksampler_sigmas('beta', 4, 'dpmpp_sde')\n"
        "out = samplers.ksampler(den, np.zeros((1, 4, 8, 8), np.float32), 1, sig, 'dpmpp_sde')\n"
        "assert out.shape == (1, 4, 8, 8)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'scipy')]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 16, 4, 4), (1, 4, 3, 3), (7,)])
def test_randn_seeded_is_one_generator_per_seed(shape: tuple[int, ...]) -> None:
    """``randn_seeded`` (the Brownian tree's splits drawn together, issue #22) stacks what
    torch draws from a generator seeded with each seed, whatever the shape."""
    seeds = [0, 7, 2**31 + 5, 123456789]
    got = TorchGenerator(1).randn_seeded(seeds, shape)
    assert got.shape == (len(seeds), *shape) and got.dtype == np.float32
    for row, seed in zip(got, seeds, strict=True):
        want = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()
        assert _same_bits(row, want)


def test_brownian_increment_of_an_interval_that_rounds_away() -> None:
    """A query whose ends clamp and round (6 digits) to the same time is no increment; it
    used to recurse without end (a flow schedule's last step, 0.3755622 -> 0)."""
    tree = BrownianTreeNoise((1, 4, 2, 2), 0.37556222, 1.0, 3)
    np.testing.assert_array_equal(tree.increment(0.0, 0.37556222), np.zeros((1, 4, 2, 2)))
    assert np.isfinite(tree.increment(0.5, 0.75)).all()
