"""Train the bundled demo models of the shapes world from scratch: VAE, CLIP, then UNet + text encoder.

Writes ``assets/demo-sd/`` (a StableDiffusionPipeline folder) and ``assets/demo-clip/`` (an open_clip
``local-dir:`` folder). Deterministic for a given seed and device: every batch is drawn from ``(seed, stage, step)``,
so a run resumed from its checkpoint gives the same weights as an uninterrupted one.

Example (the bundled weights; about 55 minutes of one CPU core, 54 min CPU time measured):

    OMP_NUM_THREADS=1 python -m dsas_diffusion.demo.train

Resume after an interruption: run the same command again (checkpoints live in ``--workdir``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsas_core.errors import DsasError
from dsas_core.paths import assets_dir

from . import models as M
from .tokenizer import write_clip_tokenizer
from .world import COLOURS, SHAPES, TRAIN_COMBOS, caption, sample_batch

STAGE_IDS = {"vae": 1, "clip": 2, "unet": 3}


# ---------------------------------------------------------------- helpers

def to_pixels(imgs: np.ndarray, device: str) -> Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(imgs).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def batch_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, STAGE_IDS[stage], step])


def torch_gen(seed: int, stage: str, step: int, device: str) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed * 1_000_003 + STAGE_IDS[stage] * 100_000_007 + step)


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.45 * (1 + math.cos(math.pi * p)))


def save_ckpt(path: Path, tensors: dict[str, Tensor], meta: dict) -> None:
    """Checkpoint = one safetensors file; JSON metadata in its header (no pickle). Written atomically."""
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def load_ckpt(path: Path) -> tuple[dict[str, Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(str(path)), meta


def pack(prefix: str, module: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict[str, Tensor]:
    """Model (and AdamW state) as flat tensors for a checkpoint."""
    out = {f"{prefix}.model.{k}": v for k, v in module.state_dict().items()}
    if opt is not None:
        for i, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                out[f"{prefix}.opt.{i}.{k}"] = torch.as_tensor(v)
    return out


def unpack(prefix: str, tensors: dict[str, Tensor], module: nn.Module, opt: torch.optim.Optimizer | None = None) -> None:
    p = f"{prefix}.model."
    module.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
    if opt is not None:
        state: dict[int, dict[str, Tensor]] = {}
        p = f"{prefix}.opt."
        for k, v in tensors.items():
            if k.startswith(p):
                i, name = k[len(p):].split(".", 1)
                state.setdefault(int(i), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


class Stage:
    """Bookkeeping of one resumable stage: checkpoint file, fingerprint of its settings, progress bar."""

    def __init__(self, name: str, workdir: Path, settings: dict, steps: int, every: int) -> None:
        self.name, self.settings, self.steps, self.every = name, settings, steps, every
        self.path = workdir / f"{name}.safetensors"

    def resume(self) -> tuple[int, dict[str, Tensor] | None, dict]:
        """(first step to run, checkpoint tensors or None, metadata)."""
        if not self.path.exists():
            return 0, None, {}
        tensors, meta = load_ckpt(self.path)
        if meta.get("settings") != self.settings:
            raise DsasError(
                f"Checkpoint {self.path} was written with other settings ({meta.get('settings')}) than this run "
                f"({self.settings}). Delete it, pass --workdir elsewhere, or --fresh to start over."
            )
        return int(meta["step"]), tensors, meta

    def bar(self, start: int) -> Iterable[int]:
        return tqdm(range(start, self.steps), initial=start, total=self.steps, desc=self.name, dynamic_ncols=True,
                    mininterval=2.0)

    def save(self, step: int, tensors: dict[str, Tensor], **extra: object) -> None:
        save_ckpt(self.path, tensors, {"step": step, "settings": self.settings, **extra})


# ---------------------------------------------------------------- stage 1: VAE

def train_vae(a: argparse.Namespace, workdir: Path):  # -> (AutoencoderKL, scaling_factor)
    torch.manual_seed(a.seed)
    vae = M.build_vae().to(a.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
    st = Stage("vae", workdir, {"seed": a.seed, "steps": a.vae_steps, "batch": a.vae_batch, "lr": a.vae_lr,
                                "kl": a.vae_kl}, a.vae_steps, a.ckpt_every)
    start, tensors, meta = st.resume()
    if tensors is not None:
        unpack("vae", tensors, vae, opt)
        if "scaling_factor" in meta:
            return vae, float(meta["scaling_factor"])
    vae.train()
    for step in st.bar(start):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.vae_steps, a.vae_lr)
        x = to_pixels(sample_batch(batch_rng(a.seed, "vae", step), a.vae_batch)[0], a.device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=torch_gen(a.seed, "vae", step, a.device), device=a.device)
        rec = vae.decode(z).sample
        loss = (rec - x).pow(2).mean() + a.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % st.every == 0 and step + 1 < st.steps:
            st.save(step + 1, pack("vae", vae, opt))
    vae.eval()
    with torch.no_grad():  # latent std over 1024 images sets the scaling factor (as for SD's 0.18215)
        x = to_pixels(sample_batch(batch_rng(a.seed, "vae", 10**9), 1024)[0], a.device)
        sf = float(1.0 / vae.encode(x).latent_dist.mean.std())
    st.save(st.steps, pack("vae", vae, opt), scaling_factor=sf)
    return vae, sf


# ---------------------------------------------------------------- stage 2: CLIP

# (template, uses colour, uses shape, uses background); the full caption is one of them
CLIP_TEMPLATES: tuple[tuple[str, bool, bool, bool], ...] = (
    ("a {c} {s} on a {b} background", True, True, True),
    ("a {c} {s}", True, True, False),
    ("a {c} shape", True, False, False),
    ("a {s}", False, True, False),
    ("a {s} on a {b} background", False, True, True),
    ("a {b} background", False, False, True),
    ("a {c} shape on a {b} background", True, False, True),
)


def clip_captions(rng: np.random.Generator, scenes) -> tuple[list[str], Tensor]:
    """One random caption per scene (from CLIP_TEMPLATES); returns unique captions and the (B, U) truth matrix:
    caption u is true of image i when every attribute it names matches."""
    keys = []
    for s in scenes:
        t, uc, us, ub = CLIP_TEMPLATES[int(rng.integers(len(CLIP_TEMPLATES)))]
        keys.append((t, s.colour if uc else None, s.shape if us else None, s.background if ub else None))
    uniq = sorted(set(keys), key=str)
    truth = torch.tensor([[all(v is None or v == w for v, w in zip(k[1:], (s.colour, s.shape, s.background)))
                           for k in uniq] for s in scenes])
    texts = [t.format(c=c, s=sh, b=b) for t, c, sh, b in uniq]
    return texts, truth


def multi_positive_loss(logits: Tensor, truth: Tensor) -> Tensor:
    """Contrastive loss with several true captions per image (and images per caption): -log P(any true)."""
    neg = torch.finfo(logits.dtype).min
    i2t = torch.logsumexp(logits.masked_fill(~truth, neg), 1) - torch.logsumexp(logits, 1)
    t2i = torch.logsumexp(logits.T.masked_fill(~truth.T, neg), 1) - torch.logsumexp(logits.T, 1)
    return -(i2t.mean() + t2i.mean()) / 2


def train_clip(a: argparse.Namespace, workdir: Path):  # -> open_clip CLIP
    import open_clip

    torch.manual_seed(a.seed)
    model = M.build_clip().to(a.device)
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=M.MAX_TOKENS)  # the default CLIP BPE tokenizer
    opt = torch.optim.AdamW(model.parameters(), lr=a.clip_lr, weight_decay=0.0)
    st = Stage("clip", workdir, {"seed": a.seed, "steps": a.clip_steps, "batch": a.clip_batch, "lr": a.clip_lr},
               a.clip_steps, a.ckpt_every)
    start, tensors, meta = st.resume()
    if tensors is not None:
        unpack("clip", tensors, model, opt)
        if meta.get("done"):
            return model.eval()
    cache: dict[str, Tensor] = {}
    model.train()
    for step in st.bar(start):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.clip_steps, a.clip_lr)
        rng = batch_rng(a.seed, "clip", step)
        imgs, scenes = sample_batch(rng, a.clip_batch)
        texts, truth = clip_captions(rng, scenes)
        for t in texts:
            if t not in cache:
                cache[t] = tok([t])[0]
        ids = torch.stack([cache[t] for t in texts]).to(a.device)
        fi = model.encode_image(to_pixels(imgs, a.device), normalize=True)
        ft = model.encode_text(ids, normalize=True)
        logits = model.logit_scale.exp().clamp(max=100) * fi @ ft.T
        loss = multi_positive_loss(logits, truth.to(a.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % st.every == 0 and step + 1 < st.steps:
            st.save(step + 1, pack("clip", model, opt))
    st.save(st.steps, pack("clip", model, opt), done=True)
    return model.eval()


# ---------------------------------------------------------------- stage 3: UNet + text encoder

def train_unet(a: argparse.Namespace, workdir: Path, vae, sf: float):  # -> (unet, text_encoder) with EMA weights
    from transformers import CLIPTokenizer

    torch.manual_seed(a.seed)
    unet, te = M.build_unet().to(a.device), M.build_text_encoder().to(a.device)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=a.unet_lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    train_sched, _ = M.build_schedulers()
    acp = train_sched.alphas_cumprod.to(a.device)  # (1000,)
    tok = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(workdir / "tokenizer", M.MAX_TOKENS)))
    st = Stage("unet", workdir, {"seed": a.seed, "steps": a.unet_steps, "batch": a.unet_batch, "lr": a.unet_lr,
                                 "uncond": a.uncond, "ema": a.ema, "snr_gamma": a.snr_gamma,
                                 "prediction": a.prediction, "vae_sf": sf}, a.unet_steps, a.ckpt_every)
    start, tensors, meta = st.resume()
    if tensors is not None:
        unpack("unet", tensors, unet, opt)
        unpack("te", tensors, te)
        for i, e in enumerate(ema):
            e.copy_(tensors[f"ema.{i}"])
    cache: dict[str, Tensor] = {}
    vae.eval().requires_grad_(False)
    unet.train(), te.train()
    for step in (st.bar(start) if not (tensors is not None and meta.get("done")) else []):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.unet_steps, a.unet_lr)
        rng = batch_rng(a.seed, "unet", step)
        imgs, scenes = sample_batch(rng, a.unet_batch)
        caps = ["" if rng.random() < a.uncond else s.caption for s in scenes]
        for c in set(caps) - cache.keys():
            cache[c] = tok(c, padding="max_length", max_length=M.MAX_TOKENS, truncation=True, return_tensors="pt").input_ids[0]
        ids = torch.stack([cache[c] for c in caps]).to(a.device)
        g = torch_gen(a.seed, "unet", step, a.device)
        with torch.no_grad():
            post = vae.encode(to_pixels(imgs, a.device)).latent_dist
            z0 = (post.mean + post.std * torch.randn(post.mean.shape, generator=g, device=a.device)) * sf
        noise = torch.randn(z0.shape, generator=g, device=a.device)
        t = torch.randint(0, 1000, (len(caps),), generator=g, device=a.device)
        ab = acp[t].view(-1, 1, 1, 1)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        target = noise if a.prediction == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * z0
        pred = unet(zt, t, te(ids)[0]).sample
        snr = ab.flatten() / (1 - ab.flatten())
        w = snr.clamp(max=a.snr_gamma) / (snr if a.prediction == "epsilon" else snr + 1)
        loss = ((pred - target).pow(2).mean((1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(a.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - d)
        if (step + 1) % st.every == 0 and step + 1 < st.steps:
            st.save(step + 1, {**pack("unet", unet, opt), **pack("te", te), **{f"ema.{i}": e for i, e in enumerate(ema)}})
    if not (tensors is not None and meta.get("done")):
        st.save(st.steps, {**pack("unet", unet, opt), **pack("te", te), **{f"ema.{i}": e for i, e in enumerate(ema)}}, done=True)
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return unet.eval(), te.eval()


# ---------------------------------------------------------------- export

def export_sd(out: Path, vae, sf: float, unet, te, prediction: str) -> Path:
    """Write the StableDiffusionPipeline folder (fp16 weights, CLIP BPE tokenizer files)."""
    import copy

    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    _, sched = M.build_schedulers()
    sched = DDIMScheduler.from_config(sched.config, prediction_type=prediction)
    if out.exists():
        shutil.rmtree(out)
    tok_tmp = write_clip_tokenizer(out.parent / (out.name + ".tokenizer.tmp"), M.MAX_TOKENS)
    vae = copy.deepcopy(vae).to("cpu", torch.float16)
    vae.register_to_config(scaling_factor=sf)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=copy.deepcopy(te).to("cpu", torch.float16), tokenizer=CLIPTokenizer.from_pretrained(str(tok_tmp)),
        unet=copy.deepcopy(unet).to("cpu", torch.float16), scheduler=sched, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    shutil.rmtree(out / "tokenizer")
    shutil.move(str(tok_tmp), str(out / "tokenizer"))
    return out


def export_clip(out: Path, model) -> Path:
    """Write the open_clip ``local-dir:`` folder (fp16 weights)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = {"model_cfg": M.CLIP_MODEL_CFG, "preprocess_cfg": M.CLIP_PREPROCESS_CFG}
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()},
              str(out / "open_clip_model.safetensors"))
    return out


# ---------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m dsas_diffusion.demo.train", description=__doc__.split("\n\n")[0],
        epilog="example:\n  OMP_NUM_THREADS=1 python -m dsas_diffusion.demo.train\n"
               "  python -m dsas_diffusion.demo.train --device cuda --out /tmp/demo   # a GPU run, elsewhere",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=assets_dir(), help="folder receiving demo-sd/ and demo-clip/ (default: assets/)")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo-train"), help="checkpoints, for resuming (default: runs/demo-train)")
    p.add_argument("--fresh", action="store_true", help="delete the checkpoints in --workdir and start over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--ckpt-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--vae-steps", type=int, default=500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--clip-steps", type=int, default=1500)
    p.add_argument("--clip-batch", type=int, default=256)
    p.add_argument("--clip-lr", type=float, default=2e-3)
    p.add_argument("--unet-steps", type=int, default=3000)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--unet-lr", type=float, default=3e-3)
    p.add_argument("--uncond", type=float, default=0.1, help="caption dropout for classifier-free guidance")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR loss weighting")
    p.add_argument("--prediction", choices=("epsilon", "v_prediction"), default="v_prediction")
    p.add_argument("--skip-clip", action="store_true", help="do not train/export the CLIP model")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(a.threads)
    if a.fresh and a.workdir.exists():
        shutil.rmtree(a.workdir)
    a.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    vae, sf = train_vae(a, a.workdir)
    print(f"vae done ({time.time() - t0:.0f} s), scaling_factor={sf:.4f}", flush=True)
    if not a.skip_clip:
        clip = train_clip(a, a.workdir)
        print(f"clip done ({time.time() - t0:.0f} s) -> {export_clip(a.out / 'demo-clip', clip)}", flush=True)
    unet, te = train_unet(a, a.workdir, vae, sf)
    print(f"unet done ({time.time() - t0:.0f} s) -> {export_sd(a.out / 'demo-sd', vae, sf, unet, te, a.prediction)}", flush=True)
    print(f"total {time.time() - t0:.0f} s; words: {', '.join(COLOURS)} / {', '.join(SHAPES)}; "
          f"{len(TRAIN_COMBOS)} training combinations, e.g. {caption('red', 'circle', 'green')!r}")


if __name__ == "__main__":
    main()
