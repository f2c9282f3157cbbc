"""Image scores: CLIP (open_clip, any checkpoint or the bundled demo model) and the shapes-world oracles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dsas_core import DsasError
from dsas_core.errors import loading_failed

ATTRIBUTES = ("colour", "shape", "background")


class ClipScorer:
    """CLIP image and text embeddings with the three scores the evaluation uses."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, device: str | torch.device = "cpu") -> None:
        self.model, self.preprocess, self.tokenizer = model.eval().to(device), preprocess, tokenizer
        self.device = torch.device(device)

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> Tensor:
        """(n, e) unit-norm image embeddings."""
        batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1).cpu()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> Tensor:
        """(n, e) unit-norm text embeddings."""
        tokens = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    def zero_shot(self, image_emb: Tensor, source_text: str, target_text: str) -> Tensor:
        """(n,) probability of ``target_text`` against ``source_text``: softmax of 100·cosine over the two."""
        logits = 100.0 * image_emb @ self.texts([source_text, target_text]).T  # (n, 2)
        return logits.softmax(-1)[:, 1]

    @staticmethod
    def cosine(a: Tensor, b: Tensor) -> Tensor:
        """(n,) row-wise cosine of unit-norm embeddings."""
        return (a * b).sum(-1)


def load_clip(spec: str, device: str | torch.device = "cpu") -> ClipScorer:
    """``"demo"`` (the bundled shapes-world CLIP) or ``"ARCH:PRETRAINED"`` such as ``"ViT-L-14:openai"``."""
    if spec == "demo":
        from .demo import load_demo_clip

        return ClipScorer(*load_demo_clip(device=device), device=device)
    arch, sep, pretrained = spec.partition(":")
    if not sep or not arch or not pretrained:
        raise DsasError(f"--clip {spec!r}: name a CLIP as ARCH:PRETRAINED (e.g. ViT-L-14:openai) or 'demo'.")
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
    except (RuntimeError, ValueError, OSError) as err:
        raise loading_failed(f"CLIP {spec!r}", err, "Give an open_clip ARCH:PRETRAINED you can download (e.g. "
                             "ViT-L-14:openai), ARCH:/path/to/weights, or 'demo' for the bundled world") from None
    return ClipScorer(model, preprocess, open_clip.get_tokenizer(arch), device=device)


@dataclass(frozen=True)
class OracleTarget:
    """What the concept should achieve, measured from pixels: ``colour=blue`` or ``colour!=red``."""

    attribute: str
    value: str
    negate: bool = False

    @classmethod
    def parse(cls, spec: str) -> "OracleTarget":
        """``ATTRIBUTE=VALUE`` or ``ATTRIBUTE!=VALUE``, attribute one of colour, shape, background."""
        negate = "!=" in spec
        attribute, sep, value = spec.partition("!=" if negate else "=")
        if not sep or attribute not in ATTRIBUTES or not value:
            raise DsasError(f"oracle target {spec!r}: write ATTRIBUTE=VALUE or ATTRIBUTE!=VALUE with ATTRIBUTE in "
                            f"{ATTRIBUTES}, e.g. colour=blue.")
        return cls(attribute, value, negate)

    def __str__(self) -> str:
        return f"{self.attribute}{'!=' if self.negate else '='}{self.value}"

    def hit(self, attrs: tuple[str | None, str | None, str]) -> bool:
        """Does an image with these (colour, shape, background) meet the target?"""
        value = attrs[ATTRIBUTES.index(self.attribute)]
        return (value != self.value) if self.negate else (value == self.value)


def read_attributes(image: Image.Image) -> tuple[str | None, str | None, str]:
    """(shape colour, shape kind, background) of a shapes-world image, measured from pixels."""
    from .demo.world import read_image

    return read_image(np.asarray(image.convert("RGB")))


def unchanged_fraction(a: tuple[Any, ...], b: tuple[Any, ...]) -> float:
    """Fraction of the three attributes equal between two readings."""
    return sum(x == y for x, y in zip(a, b)) / len(ATTRIBUTES)
