"""A concept: per-site (transform, scaler) pairs plus a validated config; saved as safetensors + JSON.

On disk a concept is a directory holding ``dsas_config.json`` and ``dsas_model.safetensors``; tensors are keyed
``"{site}/transform/{name}"`` and ``"{site}/scaler/{name}"``. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from .errors import DsasError
from .scaler import DEFAULT_COMPONENTS, DEFAULT_GATE, SCALER_NAMES, Scaler, scaler_class
from .transforms import TRANSFORMS, Transform, transform_class

CONFIG_NAME = "dsas_config.json"
WEIGHTS_NAME = "dsas_model.safetensors"
FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass
class ConceptConfig:
    """Everything about a concept except its tensors. Validated on construction; round-trips through JSON."""

    name: str
    transform: str
    scaler: str
    sites: list[str]
    site_widths: dict[str, int]
    source_text: str | None = None
    target_text: str | None = None
    model_class: str | None = None
    n_components: int = DEFAULT_COMPONENTS
    gate: float = DEFAULT_GATE
    scaler_input_width: int | None = None  # width the scaler reads when not the site's (the prompt scaler's)
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> accuracy, gated, counts
    fitted_on: dict[str, Any] = field(default_factory=dict)  # library versions, collect settings, ...
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise DsasError(
                f"concept name {self.name!r} is not valid: use 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit (e.g. 'pear' or 'red-to-blue')."
            )
        if self.transform not in TRANSFORMS:
            raise DsasError(f"unknown transform {self.transform!r}; choose one of {sorted(TRANSFORMS)}.")
        if self.scaler not in SCALER_NAMES:
            raise DsasError(f"unknown scaler {self.scaler!r}; choose one of {list(SCALER_NAMES)}.")
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise DsasError(f"a concept needs a non-empty list of distinct sites, got {self.sites!r}.")
        if set(self.site_widths) != set(self.sites):
            raise DsasError(
                f"site_widths must name exactly the concept's sites; missing {sorted(set(self.sites) - set(self.site_widths))}, "
                f"extra {sorted(set(self.site_widths) - set(self.sites))}."
            )
        if any(not isinstance(w, int) or w < 1 for w in self.site_widths.values()):
            raise DsasError(f"site widths must be positive integers, got {self.site_widths!r}.")
        if not 0.0 <= self.gate <= 1.0:
            raise DsasError(f"gate must lie in [0, 1] (a held-out accuracy), got {self.gate}.")
        siw = self.scaler_input_width
        if siw is not None and (not isinstance(siw, int) or siw < 1):
            raise DsasError(f"scaler_input_width must be a positive integer or None, got {self.scaler_input_width!r}.")
        if self.n_components < 1:
            raise DsasError(f"n_components must be >= 1, got {self.n_components}.")
        if self.format_version > FORMAT_VERSION:
            raise DsasError(
                f"this concept was saved by a newer dsas (format {self.format_version}, this one reads "
                f"{FORMAT_VERSION}): upgrade dsas-steer."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ConceptConfig":
        """Build from a dict; unknown keys are dropped with a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown concept config keys {unknown} (saved by another dsas version?)", stacklevel=2)
        required = ("name", "transform", "scaler", "sites", "site_widths")
        missing = [k for k in required if k not in data]
        if missing:
            raise DsasError(f"concept config is incomplete: missing {missing}; re-save or re-fit the concept.")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class SiteSteer:
    """The two halves of steering at one site."""

    transform: Transform
    scaler: Scaler


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file's bytes, the same for the same tensors and metadata in every process: the library writes
    its metadata map in a per-process random order, so the header's metadata is put in key order here (same
    length, same tensors, same offsets)."""
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")  # header length; the JSON header follows, padded with spaces
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # cannot happen for a reordering; keep the library's bytes rather than write a wrong file
        return data
    return data[:8] + text.ljust(n) + data[8 + n:]


class Concept:
    """A named steering concept: ``{site: SiteSteer}`` and its :class:`ConceptConfig`."""

    def __init__(self, config: ConceptConfig, sites: dict[str, SiteSteer]) -> None:
        if list(sites) != list(config.sites):
            raise DsasError(f"concept {config.name!r}: tensors given for sites {list(sites)} but the config lists {config.sites}.")
        for site, steer in sites.items():
            width = config.site_widths[site]
            if steer.transform.width != width:
                raise DsasError(f"concept {config.name!r}, site {site!r}: transform width {steer.transform.width} != site width {width}.")
            gated = config.diagnostics.get(site, {}).get("gated")
            if gated is not None:
                steer.scaler.gated = bool(gated)
        self.config = config
        self.sites = sites

    @property
    def name(self) -> str:
        """The concept's unique name (the key of its strength)."""
        return self.config.name

    def to(self, device: torch.device | str) -> "Concept":
        """Move every site's tensors to ``device``, in place; returns the concept. Optional: steering copies them
        to each site's device on first use; moving them first keeps that copy out of the first call."""
        for steer in self.sites.values():
            steer.transform.to(device)
            steer.scaler.to(device)
        return self

    def __repr__(self) -> str:
        on = sum(not s.scaler.gated for s in self.sites.values())
        return (f"Concept({self.name!r}, transform={self.config.transform!r}, scaler={self.config.scaler!r}, "
                f"sites={len(self.sites)}, ungated={on})")

    # ---------------------------------------------------------------- compatibility
    def check_fits(self, site_widths: dict[str, int], model_class: str | None = None) -> None:
        """Raise unless every site of this concept exists in ``site_widths`` with the same width."""
        if model_class and self.config.model_class and model_class != self.config.model_class:
            raise DsasError(
                f"concept {self.name!r} was fitted on a {self.config.model_class}, but this model is a {model_class}. "
                "Fit the concept again on this model (`dsas fit` for a diffusers pipeline, `dsas llm fit` for a "
                "language model)."
            )
        missing = [s for s in self.config.sites if s not in site_widths]
        if missing:
            raise DsasError(
                f"concept {self.name!r} steers sites this model does not have: {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}. It was fitted on another model; fit it again on this one."
            )
        wrong = {s: (w, site_widths[s]) for s, w in self.config.site_widths.items() if site_widths[s] != w}
        if wrong:
            site, (w, got) = next(iter(wrong.items()))
            raise DsasError(
                f"concept {self.name!r} does not fit this model: site {site!r} has width {got} here but {w} in the "
                f"concept ({len(wrong)} site(s) differ). It was fitted on another model; fit it again on this one."
            )

    def check_fingerprint(self, key: str, here: dict[str, Any], model_class: str) -> None:
        """Raise unless the architecture entries recorded in ``fitted_on[key]`` when fitting equal ``here`` (entries
        only one side has are skipped: concepts saved before a key was recorded still load)."""
        saved = self.config.fitted_on.get(key) or {}
        diff = [k for k in saved if k in here and saved[k] != here[k]]
        if diff:
            k = diff[0]
            raise DsasError(
                f"concept {self.name!r} was fitted on a different {model_class} ({k} = {saved[k]!r} there, "
                f"{here[k]!r} here): fit the concept again on this model."
            )

    # ---------------------------------------------------------------- persistence
    def tensors(self) -> dict[str, Tensor]:
        """Every tensor, keyed for safetensors."""
        out: dict[str, Tensor] = {}
        for site, steer in self.sites.items():
            for k, v in steer.transform.tensors().items():
                out[f"{site}/transform/{k}"] = v.detach().to(torch.float32).cpu().contiguous()
            for k, v in steer.scaler.tensors().items():
                out[f"{site}/scaler/{k}"] = v.detach().to(torch.float32).cpu().contiguous()
        return out

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``dsas_config.json`` + ``dsas_model.safetensors`` into ``directory`` (temp files, then rename)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        weights_tmp = path / f".{WEIGHTS_NAME}.tmp"
        config_tmp = path / f".{CONFIG_NAME}.tmp"
        try:
            weights_tmp.write_bytes(safetensors_bytes(self.tensors(), {"format": "pt", "dsas_concept": self.name}))
            config_tmp.write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
            os.replace(weights_tmp, path / WEIGHTS_NAME)
            os.replace(config_tmp, path / CONFIG_NAME)
        finally:
            for tmp in (weights_tmp, config_tmp):
                tmp.unlink(missing_ok=True)
        return path

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None) -> str:
        """Upload this concept with a model card to the hub repository ``repo_id`` (made if missing); returns the
        commit's URL. Load it back anywhere with ``load_concept(repo_id)`` (:mod:`dsas_core.hub`)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> "Concept":
        """Load and validate a concept directory written by :meth:`save_pretrained`."""
        path = Path(directory)
        if not path.is_dir():
            raise DsasError(f"no concept directory at {str(path)!r}: expected a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}.")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise DsasError(f"{str(path)!r} is not a dsas concept: {name} is missing. Concept folders are "
                                "written by `dsas fit --out`, `dsas llm fit --out` or Concept.save_pretrained().")
        try:
            data = json.loads((path / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DsasError(f"{path / CONFIG_NAME} is corrupt ({err}); re-save or re-fit the concept.") from None
        if not isinstance(data, dict):
            raise DsasError(f"{path / CONFIG_NAME} is corrupt: expected a JSON object, got {type(data).__name__}.")
        config = ConceptConfig.from_dict(data)
        try:
            tensors = load_file(str(path / WEIGHTS_NAME))
        except (SafetensorError, OSError, ValueError) as err:
            raise DsasError(
                f"{path / WEIGHTS_NAME} is corrupt or truncated ({err}); re-save or re-fit the concept."
            ) from None
        return cls.from_tensors(config, tensors, source=str(path / WEIGHTS_NAME))

    @classmethod
    def from_tensors(cls, config: ConceptConfig, tensors: dict[str, Tensor], source: str = "tensors") -> "Concept":
        """Rebuild from a config and a flat tensor dict, checking every name, shape and value."""
        t_cls = transform_class(config.transform)
        s_cls = scaler_class(config.scaler)
        expected: dict[str, tuple[int, ...]] = {}
        for site in config.sites:
            width = config.site_widths[site]
            expected |= {f"{site}/transform/{k}": s for k, s in t_cls.expected_shapes(width).items()}
            s_width = config.scaler_input_width or width
            expected |= {f"{site}/scaler/{k}": s for k, s in s_cls.expected_shapes(s_width, config.n_components).items()}
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or extra:
            raise DsasError(
                f"{source} does not match its config: missing tensors {missing[:3]}, unexpected tensors {extra[:3]}. "
                "The two files come from different concepts; re-save the concept."
            )
        for key, shape in expected.items():
            if tuple(tensors[key].shape) != shape:
                raise DsasError(f"{source}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {shape}.")
            if not torch.isfinite(tensors[key]).all():
                raise DsasError(f"{source}: tensor {key!r} contains NaN or inf; the concept is corrupt, re-fit it.")
        sites = {}
        for site in config.sites:
            t_part = {k.rsplit("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{site}/transform/")}
            s_part = {k.rsplit("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{site}/scaler/")}
            sites[site] = SiteSteer(t_cls.from_tensors(t_part), s_cls.from_tensors(s_part))
        return cls(config, sites)

