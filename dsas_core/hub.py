"""Concepts on the Hugging Face Hub: load one by repository id, push one to share it.

``huggingface_hub`` (installed with diffusers and transformers) is imported only when a function here runs: the
core itself needs nothing beyond torch and safetensors.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from .concept import CONFIG_NAME, WEIGHTS_NAME, Concept
from .errors import DsasError, loading_failed

CARD_NAME = "README.md"
ConceptLike = Union[Concept, str, "os.PathLike[str]"]  # a concept, its folder, or a hub id
Concepts = Union[Mapping[ConceptLike, float], Sequence[tuple[ConceptLike, float]]]  # with their strengths


def is_repo_id(text: str) -> bool:
    """Whether ``text`` reads as a hub repository id ('owner/name') rather than a local path."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and all(text.split("/"))


def load_concept(path_or_repo: str | os.PathLike[str], revision: str | None = None) -> Concept:
    """A concept from a local folder, or from a hub repository id ('owner/name'; only its two concept files are
    downloaded, at ``revision`` if given)."""
    path = Path(path_or_repo)
    if path.exists():
        return Concept.from_pretrained(path)
    text = str(path_or_repo)
    if not is_repo_id(text):
        raise DsasError(f"no concept at {text!r}: give a folder holding {CONFIG_NAME} + {WEIGHTS_NAME}, or a hub "
                        "repository id like 'owner/name'.")
    try:
        return download_concept(text, revision)
    except DsasError as err:  # it may have been meant as a folder: say that there is none
        raise DsasError(f"no concept folder {text!r} under {Path.cwd()}, and as a hub repository id: {err}") from None


def concept_pairs(concepts: Concepts | Any) -> list[tuple[Concept, float]]:
    """(concept, strength) pairs from ``{concept: strength}`` or ``[(concept, strength), ...]``, where a concept
    may also be given as its folder or a hub id (loaded here)."""
    if isinstance(concepts, Mapping):
        items = list(concepts.items())
    elif isinstance(concepts, (list, tuple)) and all(isinstance(p, tuple) and len(p) == 2 for p in concepts):
        items = list(concepts)
    else:
        raise DsasError("concepts must be {concept: strength} (e.g. {pear: 0.8}) or [(concept, strength), ...], "
                        f"got {type(concepts).__name__} {_short(concepts)}.")
    out = []
    for concept, strength in items:
        if not isinstance(concept, (Concept, str, os.PathLike)):
            raise DsasError(f"a concept is a Concept, its folder or a hub id, got {type(concept).__name__} "
                            f"{_short(concept)}; load one with load_concept(dir).")
        out.append((concept if isinstance(concept, Concept) else load_concept(concept), strength))
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def download_concept(repo_id: str, revision: str | None = None) -> Concept:
    """A concept from the hub repository ``repo_id`` ('owner/name'), never from a local path: its two concept files
    are downloaded (at ``revision`` if given) into the hub cache and validated."""
    if not isinstance(repo_id, str) or not is_repo_id(repo_id.strip()):
        raise DsasError(f"a hub repository id reads 'owner/name' (e.g. 'my-name/pear'), got {repo_id!r}.")
    from huggingface_hub import snapshot_download

    repo_id = repo_id.strip()
    try:
        local = snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    except (OSError, ValueError) as err:  # every huggingface_hub error is one of these
        raise loading_failed(f"concept {repo_id!r}", err, f"Give a hub id you can reach or a local folder holding "
                             f"{CONFIG_NAME} + {WEIGHTS_NAME}") from None
    if not (Path(local) / CONFIG_NAME).is_file():
        raise DsasError(f"the hub repository {repo_id!r} holds no {CONFIG_NAME}: it is not a dsas concept (push one "
                        "with `dsas push DIR OWNER/NAME`).")
    return Concept.from_pretrained(local)


def push_to_hub(concept: Concept, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload ``concept`` (its two files and a model card, ``README.md``) to the hub repository ``repo_id``, made
    if missing; returns the commit's URL. Others load it with ``load_concept(repo_id)``."""
    if not is_repo_id(repo_id):
        raise DsasError(f"repo_id must read 'owner/name' (e.g. 'my-name/{concept.name}'), got {repo_id!r}.")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="dsas-push-") as folder:
        concept.save_pretrained(folder)
        (Path(folder) / CARD_NAME).write_text(model_card(concept, repo_id), encoding="utf-8")
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=folder,
                                     commit_message=commit_message or f"Upload dsas concept {concept.name}")
        except (OSError, ValueError) as err:
            reason = str(err).strip() or type(err).__name__
            raise DsasError(f"could not push concept {concept.name!r} to {repo_id!r}: {reason}\nLog in first "
                            "(`hf auth login`, or pass a token with write access), check that the id is yours or "
                            "your organisation's, and that the hub is reachable (HF_HUB_OFFLINE unset).") from None
    return str(getattr(info, "commit_url", info))


def model_card(concept: Concept, repo_id: str) -> str:
    """The repository's README: what the concept steers, what it was fitted on, and how to use it."""
    cfg, fitted = concept.config, concept.config.fitted_on
    diffusion = fitted.get("adapter") == "diffusers"
    library = "diffusers" if diffusion else "transformers" if fitted.get("library") == "transformers" else None
    base = fitted.get("name_or_path")
    base = base if isinstance(base, str) and is_repo_id(base) else None  # the hub model it was fitted on, if one
    active = sum(not s.scaler.gated for s in concept.sites.values())
    texts = f" ({cfg.source_text!r} → {cfg.target_text!r})" if cfg.source_text or cfg.target_text else ""
    model = f"the {cfg.model_class}" if cfg.model_class else "an unrecorded model"
    if fitted.get("pipeline"):
        model += f" of a {fitted['pipeline']}"
    if base:
        model += f" ({base})"
    tags = ["dsas", "activation-steering", *([library] if library else [])]
    front = ["---", "tags:", *(f"- {t}" for t in tags), *([f"base_model: {base}"] if base else []), "---"]
    package, target, call = (("dsas_diffusion", "pipe", '    image = pipe("your prompt").images[0]') if diffusion else
                             ("dsas_transformers", "model", "    out = model.generate(**inputs)"))
    use = [f"from {package} import load_concept, steer", "", f'concept = load_concept("{repo_id}")',
           f"with steer({target}, {{concept: 1.0}}):  # {target}: a model like the one it was fitted on", call]
    about = (f"A concept for [dsas](https://pypi.org/project/dsas-steer/) (Dynamically Scaled Activation "
             f"Steering){texts}: transform `{cfg.transform}`, scaler `{cfg.scaler}`, at {len(cfg.sites)} sites "
             f"({active} active) of {model}. At each site the scaler decides when and how strongly the transform "
             "applies (per token, image position or prompt); the strength λ is yours: 0 leaves the model exactly as "
             "it was, a negative λ reverses the concept.")
    return "\n".join([*front, f"# {cfg.name}", "", about, "", "```python", *use, "```", "",
                      "`dsas inspect` on a local copy lists every site with its held-out accuracy.", ""])


__all__ = ["download_concept", "is_repo_id", "load_concept", "model_card", "push_to_hub"]
