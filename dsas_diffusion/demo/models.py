"""Configurations of the bundled demo models: the same classes as Stable Diffusion 1.5 and CLIP, tiny.

- text encoder: ``CLIPTextModel``, width 64, 2 layers, real 49408-token CLIP vocabulary, 32 positions;
- VAE: ``AutoencoderKL`` with one downsample (32×32×3 pixels -> 16×16×4 latents, ``vae_scale_factor`` 2);
- UNet: ``UNet2DConditionModel`` with ``CrossAttnDownBlock2D``/``CrossAttnUpBlock2D`` (self-attention ``attn1`` and
  cross-attention ``attn2`` at every level), block widths (32, 64);
- scheduler: DDPM linear betas for training, DDIM ("trailing" spacing) for sampling;
- CLIP: an open_clip ViT (patch 4 on 32×32) + text transformer, embedding width 64.
"""

from __future__ import annotations

from typing import Any

from .world import IMAGE_SIZE

MAX_TOKENS = 32  # text positions of both text towers (the tokenizer's model_max_length matches)
TEXT_WIDTH = 64
LATENT_CHANNELS = 4
VAE_SCALE = 2
LATENT_SIZE = IMAGE_SIZE // VAE_SCALE

SCHEDULER_KWARGS: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
    prediction_type="epsilon", clip_sample=False,
)


def build_text_encoder():  # -> CLIPTextModel
    """A fresh tiny ``CLIPTextModel`` (random weights)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, projection_dim=TEXT_WIDTH,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(cfg)


def build_vae():  # -> AutoencoderKL
    """A fresh tiny ``AutoencoderKL``: 32×32×3 <-> 16×16×4."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False,
    )


def build_unet():  # -> UNet2DConditionModel
    """A fresh tiny ``UNet2DConditionModel`` on 16×16×4 latents with cross-attention to the 64-wide text."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4,
    )


def build_schedulers():  # -> (DDPMScheduler, DDIMScheduler)
    """(training scheduler, sampling scheduler) sharing one noise schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler

    return DDPMScheduler(**SCHEDULER_KWARGS), DDIMScheduler(
        **SCHEDULER_KWARGS, timestep_spacing="trailing", set_alpha_to_one=False, steps_offset=1)


CLIP_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 4, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": MAX_TOKENS, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
CLIP_PREPROCESS_CFG: dict[str, Any] = {
    "size": IMAGE_SIZE, "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0,
}


def build_clip():  # -> open_clip.CLIP
    """A fresh tiny open_clip ``CLIP`` model (random weights)."""
    from open_clip.model import CLIP

    return CLIP(**CLIP_MODEL_CFG)
