"""Tiny random-initialised diffusers pipelines built offline from configs (shared by the diffusion tests)."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import torch

SIZE = 16  # image side; latents are 8×8


@functools.lru_cache(maxsize=1)
def tokenizer_dir() -> str:
    """A CLIP tokenizer folder rebuilt from open_clip's bundled vocabulary (written once, then reused)."""
    from dsas_diffusion.demo.tokenizer import write_clip_tokenizer

    final = Path(tempfile.gettempdir()) / "dsas-test-clip-tokenizer-16"
    if not (final / "special_tokens_map.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix="dsas-tok-"))
        write_clip_tokenizer(tmp, model_max_length=16)
        try:
            tmp.rename(final)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def _text_encoder(seed: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, projection_dim=32,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=SIZE).eval()


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def tiny_sd():
    """A StableDiffusionPipeline: 2-level UNet with self- and cross-attention at both levels."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8).eval()
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder(3), tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir()),
        unet=unet, scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl():
    """A StableDiffusionXLPipeline with two text encoders and text-time conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    torch.manual_seed(4)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
        use_linear_projection=True).eval()
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir())
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_text_encoder(5), text_encoder_2=_text_encoder(6, projection=True), tokenizer=tok,
        tokenizer_2=tok, unet=unet, scheduler=_scheduler(), force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt, seed=0, steps=2, **kwargs):
    """One seeded call at SIZE×SIZE; returns the images as a float tensor (B, H, W, 3)."""
    out = pipe(prompt, num_inference_steps=steps, height=SIZE, width=SIZE, output_type="np",
               generator=torch.Generator().manual_seed(seed), **kwargs)
    return torch.from_numpy(out.images)


# ------------------------------------------------------------------------------------------------ SD3 / FLUX
T5_WORDS = (
    "a an the of on in at with beside and photo plain picture ripe yellow green red blue banana pear fruit night "
    "cat dog house tree car boat chair lamp cup clock bird horse table river road bridge window door book shoe "
    "mountain candle piano bicycle garden castle pillow rocket still life painting"
).split()
# More nouns, so a probe can be fitted on enough distinct words; their ids come after the letters, so every token
# above keeps its id and its embedding.
T5_MORE_WORDS = (
    "flower hat coat bottle glass plate spoon fork knife box bag ball kite train bus truck plane ship fish cow sheep "
    "goat pig duck frog bear lion tiger wolf fox owl bee rock hill lake sea cloud moon star sun tower wall fence gate "
    "roof bed sofa desk pen key ring bell drum flag tent cake bread egg cheese apple"
).split()


def t5_tokenizer():
    """A word-level T5 (unigram) tokenizer built in code: the words above, single letters as a fallback."""
    from transformers import T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0)]
    vocab += [(f"▁{w}", -1.0) for w in T5_WORDS] + [(c, -8.0) for c in letters]
    vocab += [(f"▁{w}", -1.0) for w in T5_MORE_WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _t5(seed: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(T5_WORDS) + 30, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                   num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    model = T5EncoderModel(cfg).eval()
    more = torch.randn(len(T5_MORE_WORDS), d_model, generator=torch.Generator().manual_seed(seed))  # T5's init: N(0, 1)
    with torch.random.fork_rng():  # the rows of T5_MORE_WORDS, drawn apart: the model above is unchanged
        model.resize_token_embeddings(cfg.vocab_size + len(more), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[-len(more):] = more
    return model


def _flow_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=SIZE, shift_factor=0.0, scaling_factor=1.0).eval()


def tiny_sd3():
    """A StableDiffusion3Pipeline: two joint blocks (the last one returns (None, image)), 2×2 patches, so a
    16×16 image has an 8×8 latent and 4×4 image tokens; CLIP text is 16 tokens, T5 text 256."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(7)
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=8).eval()
    with torch.no_grad():  # random patch embeddings drown the prompt in noise; a trained model listens to both
        transformer.pos_embed.proj.weight.mul_(0.1)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir())
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(),
        text_encoder=_text_encoder(8, projection=True), tokenizer=tok,
        text_encoder_2=_text_encoder(9, projection=True), tokenizer_2=tok,
        text_encoder_3=_t5(10, d_model=64), tokenizer_3=t5_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux(guidance_embeds: bool = True):
    """A FluxPipeline: two double-stream and two single-stream blocks; latents packed in 2×2 patches, so a 16×16
    image has an 8×8 latent and 4×4 image tokens; T5 text is 512 tokens (the pipeline's default)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizer

    torch.manual_seed(11)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6)).eval()
    with torch.no_grad():  # as in tiny_sd3: let the image stream hear the prompt over the noise
        transformer.x_embedder.weight.mul_(0.1)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(), text_encoder=_text_encoder(12),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir()), text_encoder_2=_t5(13, d_model=32),
        tokenizer_2=t5_tokenizer(), transformer=transformer)
    pipe.default_sample_size = SIZE // 2  # pipe(prompt) without a size makes 16×16 images, as the others do
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_zero_and_detach(pipe, concept, prompts) -> None:
    """λ = 0 and detaching give images bit-identical to the unsteered pipeline; λ = 3 changes them."""
    from dsas_diffusion import attach, steer

    before = run(pipe, prompts)
    with steer(pipe, {concept: 0.0}):
        at_zero = run(pipe, prompts)
    handle = attach(pipe, {concept: 3.0})
    steered = run(pipe, prompts)
    handle.remove()
    after = run(pipe, prompts)
    assert torch.equal(at_zero, before) and torch.equal(after, before)
    assert (steered - before).abs().max().item() > 1e-4
