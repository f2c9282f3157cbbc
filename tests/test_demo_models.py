"""The bundled demo models load offline and draw what they are asked (measured with the pixel oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsas_core.paths import assets_dir
from dsas_diffusion.demo import HELD_OUT, load_demo_clip, load_demo_pipeline
from dsas_diffusion.demo.evaluate import generate, oracle_accuracy
from dsas_diffusion.demo.world import COLOURS, caption, sample_batch


@pytest.fixture(scope="module")
def pipe():
    return load_demo_pipeline()


@pytest.fixture(scope="module")
def clip():
    return load_demo_clip()


def test_bundled_pipeline_draws_held_out_prompts_correctly(pipe) -> None:
    combos = list(HELD_OUT[::3])  # 8 combinations never seen in training, one seed each
    images = generate(pipe, combos, seeds=[0], steps=20, guidance=5.0)
    acc = oracle_accuracy(images, combos)
    assert acc["colour"] >= 7 / 8 and acc["background"] >= 7 / 8 and acc["shape"] >= 6 / 8, acc


def test_bundled_pipeline_is_deterministic_per_seed(pipe) -> None:
    a = generate(pipe, [HELD_OUT[0]], seeds=[3], steps=4)
    b = generate(pipe, [HELD_OUT[0]], seeds=[3], steps=4)
    assert np.array_equal(a[0], b[0])


def test_bundled_pipeline_has_the_stable_diffusion_layout(pipe) -> None:
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 16
    assert pipe.safety_checker is None
    names = [n for n, _ in pipe.unet.named_modules()]
    # self- (attn1) and cross-attention (attn2) sites: 2 down blocks × 1 + mid 1 + 2 up blocks × 2
    assert sum(n.endswith("attn1") for n in names) == sum(n.endswith("attn2") for n in names) == 7
    tok, te = pipe.tokenizer, pipe.text_encoder
    assert tok.model_max_length == te.config.max_position_embeddings == 32
    ids = tok(caption("red", "circle", "blue"), padding="max_length", max_length=32).input_ids
    assert ids[:9] == [49406, 320, 736, 7117, 525, 320, 1746, 5994, 49407] and ids[-1] == 49407
    assert te.config.hidden_size == pipe.unet.config.cross_attention_dim == 64


def test_bundled_clip_picks_the_right_colour_caption(clip) -> None:
    from PIL import Image

    model, preprocess, tokenizer = clip
    imgs, scenes = sample_batch(np.random.default_rng(11), 100)
    with torch.no_grad():
        fi = model.encode_image(torch.stack([preprocess(Image.fromarray(im)) for im in imgs]), normalize=True)
        ft = model.encode_text(tokenizer([f"a {c} shape" for c in COLOURS]), normalize=True)
    pred = (fi @ ft.T).argmax(1).tolist()
    acc = np.mean([COLOURS[p] == s.colour for p, s in zip(pred, scenes)])
    assert acc >= 0.95, acc


def test_bundled_weights_take_at_most_30_mb() -> None:
    files = list((assets_dir() / "demo-sd").rglob("*.safetensors")) + list((assets_dir() / "demo-clip").rglob("*.safetensors"))
    assert len(files) == 4
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20
