"""Trains the tiny SD1.x-architecture digits model on the CPU; writes a diffusers pipeline folder.

Three stages, all seeded:

1. **VAE** — a KL-regularised autoencoder (L1 + L2 reconstruction, KL weight 1e-6 on per-sample
   sums, as in the LDM recipe without the GAN/LPIPS terms) on augmented 64x64 digits.
2. **Latents** — ``--latent-copies`` augmented copies of the dataset are encoded once (mean and
   std of each posterior), so that the diffusion stage never runs the VAE. From their means the
   VAE's ``quant_conv`` / ``post_quant_conv`` are rewritten (an exact reparameterisation) so that
   every latent channel has mean 0 and ``latent * 0.18215`` has std 1, as SD1.x expects.
3. **Text encoder + UNet** — the text encoder is first taught to tell the digit prompts apart
   (a linear probe, kept as an auxiliary loss), then both are trained jointly: SD1.x discrete DDPM
   schedule (scaled_linear betas 0.00085..0.012, 1000 steps), epsilon prediction, min-SNR-5 loss
   weighting, 12% empty prompts for classifier-free guidance; the EMA weights are saved.

Usage (from the repository root)::

    .venv/bin/python examples/tiny_model/train.py --out examples/tiny_model/out

writes ``out/pipeline/`` (StableDiffusionPipeline.save_pretrained, fp32), ``out/vae_stage.pt``
and ``out/latents_stage.pt`` (reused by ``--skip-vae``), ``out/train.log`` and
``out/metrics.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

# NOTE: the CPU is shared; spinning OpenMP threads waste most of the time when another process
# holds a core (a 2-thread step measured 13 s spinning vs 3.5 s passive under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import augment, digit_prompts, load_ink_64
from model import (
    EOS_TOKEN_ID,
    LATENT_SCALING_FACTOR,
    MAX_LENGTH,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    count_parameters,
    write_slow_tokenizer_files,
)

__all__ = ["main"]


class Logger:
    """Prints to stdout and appends to a log file, flushing every line."""

    def __init__(self, path: Path) -> None:
        """Opens ``path`` for appending.

        Args:
            path: The log file.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._start = time.perf_counter()

    def __call__(self, message: str) -> None:
        """Logs one line, prefixed with the seconds since the start."""
        line = f"[{time.perf_counter() - self._start:7.1f}s] {message}"
        print(line, flush=True)
        self._file.write(line + "\n")
        self._file.flush()


def seed_everything(seed: int) -> None:
    """Seeds Python, numpy and torch and asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Returns the learning-rate multiplier: linear warm-up, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# Stage 1: the VAE.


def train_vae(args: argparse.Namespace, ink: torch.Tensor, log: Logger) -> torch.nn.Module:
    """Trains the KL autoencoder on augmented digits.

    Args:
        args: Command-line options (``vae_steps``, ``vae_batch``, ``vae_lr``, ``kl_weight``,
            ``seed``).
        ink: [N, 1, 64, 64] ink maps.
        log: The logger.

    Returns:
        The trained AutoencoderKL (not yet normalised).
    """
    torch.manual_seed(args.seed)
    vae = build_vae()
    log(f"vae: {count_parameters(vae):,} params")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    n = ink.shape[0]
    steps_per_epoch = n // args.vae_batch
    order = torch.randperm(n, generator=gen)
    running: dict[str, float] = {"rec": 0.0, "mse": 0.0, "kl": 0.0}
    count = 0
    vae.train()
    for step in range(args.vae_steps):
        pos = step % steps_per_epoch
        if pos == 0 and step > 0:
            order = torch.randperm(n, generator=gen)
        idx = order[pos * args.vae_batch : (pos + 1) * args.vae_batch]
        x = augment(ink[idx], gen)
        for group in opt.param_groups:
            group["lr"] = args.vae_lr * cosine_lr(step, args.vae_steps, warmup=50)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=gen
        )
        recon = vae.decode(z).sample
        err = recon - x
        # NOTE: per-sample sums, as in the LDM autoencoder loss, so kl_weight keeps its meaning.
        rec = (err.abs() + err.pow(2)).flatten(1).sum(1).mean()
        kl = posterior.kl().mean()
        loss = rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running["rec"] += rec.item() / x[0].numel()
        running["mse"] += err.pow(2).mean().item()
        running["kl"] += kl.item()
        count += 1
        if (step + 1) % steps_per_epoch == 0 or step + 1 == args.vae_steps:
            log(
                f"vae epoch {(step + 1) / steps_per_epoch:5.2f} step {step + 1}/{args.vae_steps}"
                f" rec/px {running['rec'] / count:.5f} mse {running['mse'] / count:.5f}"
                f" kl {running['kl'] / count:.1f}"
            )
            running = dict.fromkeys(running, 0.0)
            count = 0
    vae.eval()
    return vae


@torch.no_grad()
def encode_latents(
    vae: torch.nn.Module, ink: torch.Tensor, labels: torch.Tensor, copies: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encodes ``copies`` augmented copies of the dataset with the VAE as it is.

    Returns:
        ``(mean, std, labels)`` of the unscaled posteriors: [copies * N, 4, 8, 8] twice and
        [copies * N].
    """
    gen = torch.Generator().manual_seed(seed + 3)
    means, stds = [], []
    for _ in range(copies):
        for start in range(0, ink.shape[0], 256):
            posterior = vae.encode(augment(ink[start : start + 256], gen)).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds), labels.repeat(copies)


@torch.no_grad()
def normalise_vae(
    vae: torch.nn.Module, latents: tuple[torch.Tensor, torch.Tensor, torch.Tensor], log: Logger
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, Any]]:
    """Rewrites quant_conv / post_quant_conv so that scaled latents are zero-mean, unit-std.

    With ``m`` and ``s`` the per-channel mean and std of the posterior means of the encoded
    (augmented) data, the new latent is ``z' = (z - m) * k`` with ``k = 1 / (0.18215 * s)``. The
    mean rows of quant_conv are scaled by ``k`` (bias shifted), its log-variance biases get
    ``+2 log k``, and post_quant_conv undoes the map on its input, so the decoder sees exactly
    what it saw before. The encoded latents are mapped the same way (no second encoding pass).

    Args:
        vae: The trained AutoencoderKL (modified in place).
        latents: ``(mean, std, labels)`` from :func:`encode_latents` with this VAE.
        log: The logger.

    Returns:
        ``((mean, std, labels), stats)``: the posteriors in the new latent space, already
        multiplied by 0.18215 (what the UNet sees), and statistics before and after.
    """
    z, z_std, labels = latents
    mean = z.mean(dim=(0, 2, 3))
    std = z.std(dim=(0, 2, 3))
    before = (z * LATENT_SCALING_FACTOR).std().item()
    k = 1.0 / (LATENT_SCALING_FACTOR * std)
    c = mean.numel()
    qc, pqc = vae.quant_conv, vae.post_quant_conv
    qc.weight[:c] *= k[:, None, None, None]
    qc.bias[:c] = (qc.bias[:c] - mean) * k
    qc.bias[c:] += 2.0 * torch.log(k)
    # post_quant_conv(z) = W z + b with z = z' / k + m.
    pqc.bias += (pqc.weight[:, :, 0, 0] * mean[None, :]).sum(1)
    pqc.weight /= k[None, :, None, None]
    shape = (1, c, 1, 1)
    scaled_mean = (z - mean.view(shape)) * k.view(shape) * LATENT_SCALING_FACTOR
    scaled_std = z_std * k.view(shape) * LATENT_SCALING_FACTOR
    stats = {
        "scaled_latent_std_before": before,
        "channel_mean_before": mean.tolist(),
        "channel_std_before": std.tolist(),
        "scaled_latent_std_after": scaled_mean.std().item(),
        "scaled_latent_channel_std_after": scaled_mean.std(dim=(0, 2, 3)).tolist(),
        "posterior_std_after_mean": scaled_std.mean().item(),
    }
    log(
        f"latent * 0.18215 std: {before:.4f} before normalisation, "
        f"{stats['scaled_latent_std_after']:.4f} after; mean posterior std (scaled) "
        f"{stats['posterior_std_after_mean']:.4f}"
    )
    return (scaled_mean, scaled_std, labels), stats


# ----------------------------------------------------------------------------------------------
# Stage 3: UNet + text encoder.


def build_prompt_table(tokenizer: Any) -> tuple[torch.Tensor, list[list[int]], list[str]]:
    """Tokenises every training prompt once.

    Returns:
        ``(ids, by_digit, texts)``: ids [P, 77] (row 0 is the empty prompt), for each digit the
        rows of its prompts, and the prompt texts.
    """
    texts = [""]
    by_digit: list[list[int]] = []
    for digit in range(10):
        rows = []
        for prompt in digit_prompts(digit):
            rows.append(len(texts))
            texts.append(prompt)
        by_digit.append(rows)
    ids = tokenizer(
        texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    return ids, by_digit, texts


class Ema:
    """Exponential moving average of a module's parameters and buffers (with warm-up)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        """Copies ``module`` as the initial average.

        Args:
            module: The trained module.
            decay: The final decay (reached after warm-up: ``min(decay, (1+n)/(10+n))``).
        """
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """Moves the average towards ``module``'s current weights."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, cur in zip(self.shadow.state_dict().values(), module.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(cur.detach(), alpha=1.0 - d)
            else:
                avg.copy_(cur)


def prompt_targets(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the probe targets of the prompt table.

    Args:
        ids: [P, 77] token ids from :func:`build_prompt_table` (row 0 is the empty prompt, then
            ``len(PROMPT_TEMPLATES)`` rows per digit in digit order).

    Returns:
        ``(classes, mask)``: classes [P] (the digit, or 10 for the empty prompt) and mask
        [P, 77], true at the end-of-text and padding positions, the ones that (through CLIP's
        causal attention) have seen the whole prompt.
    """
    per_digit = (ids.shape[0] - 1) // 10
    classes = torch.cat([torch.tensor([10]), torch.arange(10).repeat_interleave(per_digit)])
    is_eos = ids == EOS_TOKEN_ID
    first_eos = is_eos.int().argmax(dim=1)
    mask = torch.arange(ids.shape[1])[None, :] >= first_eos[:, None]
    return classes, mask


def probe_loss(
    head: torch.nn.Module, states: torch.Tensor, classes: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the prompt probe at the masked positions, and its accuracy."""
    logits = head(states)[mask]
    targets = classes[:, None].expand_as(mask)[mask]
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return F.cross_entropy(logits, targets), accuracy


def pretrain_text_encoder(
    text_encoder: torch.nn.Module, ids: torch.Tensor, args: argparse.Namespace, log: Logger
) -> torch.nn.Module:
    """Teaches the random text encoder to tell the digit prompts apart, before the UNet sees it.

    A linear probe (11 classes: ten digits and the empty prompt) reads every end-of-text and
    padding position; both are trained on all prompts at once. Without this, joint training
    from scratch collapsed the text features (the prompts' hidden states converged to one
    another while the UNet had not yet learnt to use them) and the model ignored its prompt.

    Returns:
        The probe, kept as an auxiliary loss during joint training.
    """
    classes, mask = prompt_targets(ids)
    head = torch.nn.Linear(text_encoder.config.hidden_size, 11)
    params = list(text_encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.text_pretrain_lr, weight_decay=0.0)
    for step in range(args.text_pretrain_steps):
        loss, accuracy = probe_loss(head, text_encoder(ids).last_hidden_state, classes, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == args.text_pretrain_steps:
            log(f"text pretrain step {step + 1}: probe loss {loss.item():.4f} acc {accuracy:.3f}")
    return head


@torch.no_grad()
def conditioning_gap(
    unet: torch.nn.Module, text_encoder: torch.nn.Module, ids: torch.Tensor,
    by_digit: torch.Tensor,
) -> float:
    """How much the prompt moves the prediction: mean |eps(digit) - eps("")| / |eps("")|.

    Measured at t = 700 on fixed noise with the first template of each digit.
    """
    was_training = unet.training, text_encoder.training
    unet.eval()
    text_encoder.eval()
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(1, 4, 8, 8, generator=gen).expand(11, -1, -1, -1)
    rows = torch.cat([torch.tensor([0]), by_digit[:, 0]])
    states = text_encoder(ids[rows]).last_hidden_state
    eps = unet(x, torch.full((11,), 700), encoder_hidden_states=states).sample
    gap = ((eps[1:] - eps[:1]).flatten(1).norm(dim=1) / eps[0].norm()).mean().item()
    unet.train(was_training[0])
    text_encoder.train(was_training[1])
    return gap


def train_unet(
    args: argparse.Namespace,
    latents: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tokenizer: Any,
    log: Logger,
) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """Trains the UNet and the text encoder jointly.

    Args:
        args: Command-line options.
        latents: ``(mean, std, labels)`` from :func:`encode_latents`.
        tokenizer: The CLIP tokenizer.
        log: The logger.

    Returns:
        ``(unet_ema, text_encoder_ema, stats)``.
    """
    torch.manual_seed(args.seed + 10)
    unet = build_unet()
    text_encoder = build_text_encoder()
    log(
        f"unet: {count_parameters(unet):,} params; "
        f"text encoder: {count_parameters(text_encoder):,} params"
    )
    ids, by_digit, texts = build_prompt_table(tokenizer)
    by_digit_t = torch.tensor(by_digit)
    log(f"{len(texts)} prompts, e.g. {texts[1]!r}, {texts[-1]!r}, and the empty prompt")

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, 0)
    snr = (alphas_cumprod / (1.0 - alphas_cumprod)).float()
    sqrt_acp = alphas_cumprod.sqrt().float()
    sqrt_1macp = (1.0 - alphas_cumprod).sqrt().float()

    head = pretrain_text_encoder(text_encoder, ids, args, log)
    classes, probe_mask = prompt_targets(ids)
    params = (
        list(unet.parameters()) + list(text_encoder.parameters()) + list(head.parameters())
    )
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema_unet = Ema(unet, args.ema)
    ema_text = Ema(text_encoder, args.ema)

    mean, std, labels = latents
    n = mean.shape[0]
    gen = torch.Generator().manual_seed(args.seed + 11)
    steps_per_epoch = max(1, n // args.unet_batch)
    order = torch.randperm(n, generator=gen)
    running, count, losses = 0.0, 0, []
    unet.train()
    text_encoder.train()
    for step in range(args.unet_steps):
        pos = step % steps_per_epoch
        if pos == 0 and step > 0:
            order = torch.randperm(n, generator=gen)
        idx = order[pos * args.unet_batch : (pos + 1) * args.unet_batch]
        b = idx.numel()
        x0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        template = torch.randint(0, by_digit_t.shape[1], (b,), generator=gen)
        prompt_row = by_digit_t[labels[idx], template]
        drop = torch.rand(b, generator=gen) < args.uncond_prob
        prompt_row = torch.where(drop, torch.zeros_like(prompt_row), prompt_row)
        t = torch.randint(0, 1000, (b,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = sqrt_acp[t, None, None, None] * x0 + sqrt_1macp[t, None, None, None] * noise

        for group in opt.param_groups:
            group["lr"] = args.unet_lr * cosine_lr(step, args.unet_steps, warmup=args.warmup)
        # NOTE: encode each distinct prompt once per batch, then gather (same maths, cheaper).
        unique, inverse = torch.unique(prompt_row, return_inverse=True)
        unique_states = text_encoder(ids[unique]).last_hidden_state
        states = unique_states[inverse]
        pred = unet(xt, t, encoder_hidden_states=states).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        weight = torch.clamp(snr[t], max=args.min_snr_gamma) / snr[t]
        # NOTE: the probe keeps the text features apart while the UNet learns to read them.
        aux, _ = probe_loss(head, unique_states, classes[unique], probe_mask[unique])
        loss = (weight * per_sample).mean() + args.text_aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)

        running += per_sample.mean().item()
        count += 1
        if (step + 1) % steps_per_epoch == 0 or step + 1 == args.unet_steps:
            epoch_loss = running / count
            losses.append(epoch_loss)
            gap = conditioning_gap(unet, text_encoder, ids, by_digit_t)
            log(
                f"unet epoch {(step + 1) / steps_per_epoch:6.2f} step {step + 1}/{args.unet_steps}"
                f" eps-mse {epoch_loss:.4f} probe {aux.item():.3f} cond-gap {gap:.3f}"
                f" lr {opt.param_groups[0]['lr']:.2e}"
            )
            running, count = 0.0, 0
        if args.save_every and (step + 1) % args.save_every == 0:
            snapshot = args.out / f"snapshot_{step + 1:05d}.pt"
            state = {
                "unet": ema_unet.shadow.state_dict(),
                "text_encoder": ema_text.shadow.state_dict(),
            }
            torch.save(state, snapshot)
            log(f"saved {snapshot}")
    return ema_unet.shadow, ema_text.shadow, {"unet_epoch_losses": losses}


def save_pipeline(
    out: Path, vae: torch.nn.Module, text_encoder: torch.nn.Module, unet: torch.nn.Module,
    tokenizer: Any,
) -> Path:
    """Writes the complete diffusers StableDiffusionPipeline folder (fp32) to ``out/pipeline``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = out / "pipeline"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    write_slow_tokenizer_files(folder / "tokenizer")
    return folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line (defaults are the shipped model's settings)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vae-steps", type=int, default=350)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--skip-vae", action="store_true", help="reuse out/vae_stage.pt")
    p.add_argument("--latent-copies", type=int, default=3)
    p.add_argument("--unet-steps", type=int, default=800)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--min-snr-gamma", type=float, default=5.0)
    p.add_argument("--uncond-prob", type=float, default=0.12)
    p.add_argument("--text-pretrain-steps", type=int, default=100)
    p.add_argument("--text-pretrain-lr", type=float, default=2e-3)
    p.add_argument("--text-aux-weight", type=float, default=0.1)
    p.add_argument("--save-every", type=int, default=0, help="save EMA snapshots (trials)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Runs the three stages and writes the pipeline folder, log and metrics."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Logger(out / "train.log")
    log(f"args: {vars(args)}")
    started = time.perf_counter()
    ink, labels = load_ink_64()
    tokenizer = build_tokenizer()

    metrics: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    vae_path = out / "vae_stage.pt"
    if args.skip_vae:
        vae = build_vae()
        vae.load_state_dict(torch.load(vae_path, weights_only=True))
        vae.eval()
        log(f"reused {vae_path}")
    else:
        vae = train_vae(args, ink, log)
    vae.requires_grad_(False)
    metrics["vae_seconds"] = time.perf_counter() - started

    t0 = time.perf_counter()
    latents_path = out / "latents_stage.pt"
    if args.skip_vae and latents_path.is_file():
        cached = torch.load(latents_path, weights_only=True)
        latents, metrics["latents"] = cached["latents"], cached["stats"]
        log(f"reused {latents_path}")
    else:
        raw = encode_latents(vae, ink, labels, args.latent_copies, args.seed)
        latents, metrics["latents"] = normalise_vae(vae, raw, log)
        torch.save(vae.state_dict(), vae_path)
        torch.save({"latents": latents, "stats": metrics["latents"]}, latents_path)
    log(f"{latents[0].shape[0]} latents ready after {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    unet, text_encoder, stats = train_unet(args, latents, tokenizer, log)
    metrics.update(stats)
    metrics["unet_seconds"] = time.perf_counter() - t0

    folder = save_pipeline(out, vae, text_encoder, unet, tokenizer)
    metrics["total_seconds"] = time.perf_counter() - started
    metrics["params"] = {
        "unet": count_parameters(unet),
        "text_encoder": count_parameters(text_encoder),
        "vae": count_parameters(vae),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    log(f"wrote {folder}; total {metrics['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
