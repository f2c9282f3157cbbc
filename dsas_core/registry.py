"""What an app serving concepts needs, model-agnostic: concepts by name, validated uploads, a pool of model copies.

Safety rules an app relies on: concepts are addressed by *name* only, and a name is looked up in the registry (the
bundled concepts plus the user's concept folder); uploads are validated (:func:`read_upload`: one JSON config + one
safetensors file; the caller then checks the concept against its models) before they are saved under the concept's
own name.
Nothing here takes a file path from a caller except the uploaded files themselves.
"""

from __future__ import annotations

import copy
import json
import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from safetensors import SafetensorError
from safetensors.torch import load_file

from .concept import CONFIG_NAME, Concept, ConceptConfig
from .errors import DsasError

T = TypeVar("T")

# strengths an app and its API accept: the demo worlds' concepts act between λ = 1 and 12, real checkpoints mostly
# within ±2
MAX_STRENGTH = 16.0


MAX_SWEEP_PROMPTS = 256  # prompts per set an app's evaluation takes (the command line takes any number)
MAX_SWEEP_STRENGTHS = 16


def check_sweep(sets: dict[str, list[str]], strengths: list[float]) -> None:
    """Refuse an app evaluation larger than :data:`MAX_SWEEP_PROMPTS` prompts per set or :data:`MAX_SWEEP_STRENGTHS`
    strengths (a shared app stays responsive; ``dsas eval`` / ``dsas llm eval`` run sweeps of any size)."""
    for name, texts in sets.items():
        if len(texts) > MAX_SWEEP_PROMPTS:
            raise DsasError(f"{len(texts)} {name} prompts: the app evaluates at most {MAX_SWEEP_PROMPTS} per set; run "
                            "larger sweeps with the command line (dsas eval, dsas llm eval).")
    if len(strengths) > MAX_SWEEP_STRENGTHS:
        raise DsasError(f"{len(strengths)} strengths: the app sweeps at most {MAX_SWEEP_STRENGTHS}; run larger sweeps "
                        "with the command line (dsas eval, dsas llm eval).")


def check_strengths(strengths: dict[str, float], registry: ConceptRegistry) -> None:
    """Refuse unknown concept names and strengths outside ±:data:`MAX_STRENGTH`."""
    for name, value in strengths.items():
        registry.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DsasError(f"strength of {name!r} must be a number, got {value!r}.")
        if not -MAX_STRENGTH <= float(value) <= MAX_STRENGTH:
            raise DsasError(f"strength of {name!r} must be between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}, "
                            f"got {value}.")


class ConceptRegistry:
    """Concepts by name: read-only bundled folders plus one writable user folder (later folders win)."""

    def __init__(self, bundled: Sequence[Path], user_dir: Path) -> None:
        self.bundled = [Path(p) for p in bundled]
        self.user_dir = Path(user_dir)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, tuple[float, Concept]] = {}
        self._lock = threading.Lock()

    def _folders(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for root in [*self.bundled, self.user_dir]:
            if root.is_dir():
                for sub in sorted(root.iterdir()):
                    if (sub / CONFIG_NAME).is_file():
                        found[sub.name] = sub
        return found

    def names(self) -> list[str]:
        """Every available concept name, sorted."""
        return sorted(self._folders())

    def get(self, name: str) -> Concept:
        """The concept called ``name``; anything not in the registry (a path, say) is refused."""
        folders = self._folders()
        if name is None or name == "":
            raise DsasError(f"no concept chosen: pick one of {sorted(folders)}.")
        if not isinstance(name, str) or name not in folders:
            raise DsasError(f"unknown concept {name!r}: choose one of {sorted(folders)} (concepts are picked by "
                            "name from the app's concept folder, or uploaded).")
        path = folders[name]
        stamp = (path / CONFIG_NAME).stat().st_mtime
        with self._lock:
            hit = self._cache.get(name)
            if hit is None or hit[0] != stamp:
                hit = (stamp, Concept.from_pretrained(path))
                self._cache[name] = hit
        return hit[1]

    def fitting(self, check: Callable[[Concept], object]) -> list[str]:
        """Names of the concepts ``check`` accepts (it raises :class:`DsasError` for one that does not fit)."""
        names = []
        for name in self.names():
            try:
                check(self.get(name))
            except DsasError:
                continue
            names.append(name)
        return names

    def check_new_name(self, name: str) -> bool:
        """Refuse a bundled concept's name for a new concept (it would hide the bundled one); True when a concept
        of the user folder has it (saving replaces that one)."""
        if any((root / name / CONFIG_NAME).is_file() for root in self.bundled):
            raise DsasError(f"{name!r} is the name of a bundled example concept: give the new concept another name.")
        return (self.user_dir / name / CONFIG_NAME).is_file()

    def add(self, concept: Concept) -> str:
        """Save a concept into the user folder under its own (validated) name; returns the name."""
        self.check_new_name(concept.name)
        concept.save_pretrained(self.user_dir / concept.name)
        return concept.name

    def export(self, name: str) -> list[str]:
        """Copies of a concept's two files in a fresh temporary folder, for download."""
        concept = self.get(name)
        out = Path(tempfile.mkdtemp(prefix="dsas-concept-")) / concept.name
        concept.save_pretrained(out)
        return [str(p) for p in sorted(out.iterdir())]


def read_upload(files: Sequence[str | Path]) -> Concept:
    """The concept in exactly two uploaded files (a JSON config and safetensors weights), validated."""
    paths = [Path(f) for f in files or []]
    configs = [p for p in paths if p.suffix.lower() == ".json"]
    weights = [p for p in paths if p.suffix.lower() == ".safetensors"]
    others = [p.name for p in paths if p not in configs and p not in weights]
    if others or len(configs) != 1 or len(weights) != 1:
        raise DsasError(
            "upload exactly the two files of a saved concept: dsas_config.json and dsas_model.safetensors "
            f"(got {[p.name for p in paths]}). Other file types are refused."
        )
    try:
        data = json.loads(configs[0].read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        tensors = load_file(str(weights[0]))
    except (ValueError, UnicodeDecodeError, SafetensorError, OSError) as err:
        raise DsasError(f"the uploaded concept is not a valid dsas concept ({err}); upload the two files "
                        "written by save_pretrained / dsas fit.") from None
    return Concept.from_tensors(ConceptConfig.from_dict(data), tensors, source="the uploaded weights")


class ModelPool(Generic[T]):
    """Independent copies of one model (or pipeline), so simultaneous requests never share hooks or strengths."""

    def __init__(self, model: T, size: int) -> None:
        self.free: queue.Queue[T] = queue.Queue()
        self.free.put(model)
        for _ in range(size - 1):
            self.free.put(copy.deepcopy(model))
        self.reference = model

    @contextmanager
    def borrow(self) -> Iterator[T]:
        """Check one copy out for the duration of a request."""
        model = self.free.get()
        try:
            yield model
        finally:
            self.free.put(model)


class Pools(Generic[T]):
    """Models by launch name, each loaded on first use into a :class:`ModelPool` of ``workers`` copies. ``lock``
    serialises loading: share one between the pools of an app, since loading imports modules (transformers'
    lazy imports fail when two threads run them at once)."""

    def __init__(self, loaders: dict[str, Callable[[], T]], workers: int, flag: str = "--model",
                 lock: threading.Lock | None = None) -> None:
        if not loaders:
            raise DsasError(f"the app needs at least one model (e.g. {flag} demo).")
        self.loaders = loaders
        self.workers = workers
        self.flag = flag
        self._pools: dict[str, ModelPool[T]] = {}
        self.lock = lock or threading.Lock()

    def names(self) -> list[str]:
        """Model names offered."""
        return list(self.loaders)

    def __getitem__(self, model: str) -> ModelPool[T]:
        if model not in self.loaders:
            raise DsasError(f"unknown model {model!r}: this app serves {self.names()} (add models at launch: "
                            f"python app.py {self.flag} NAME).")
        with self.lock:
            if model not in self._pools:
                self._pools[model] = ModelPool(self.loaders[model](), self.workers)
            return self._pools[model]


class StudioBase:
    """Launch-listed models, a concept registry and a small cache of unsteered outputs; subclasses say how a
    concept is checked against a model (:meth:`checker`) and how they generate."""

    flag = "--model"  # the launch flag that adds a model, for error messages
    scorer_flag = "--clip"  # the launch flag that offers another evaluation scorer
    default_scorers: tuple[str, ...] = ("demo",)

    def __init__(self, loaders: dict[str, Callable[[], Any]], registry: ConceptRegistry, workers: int = 2,
                 cache_size: int = 64, load_lock: threading.Lock | None = None,
                 scorers: Sequence[str] = ()) -> None:
        self.registry = registry
        # evaluation scorers a caller may name: chosen at launch, never a path or id a caller makes up
        self.scorers = list(dict.fromkeys([*self.default_scorers, *scorers]))
        self.workers = workers
        self.pools: Pools[Any] = Pools(loaders, workers, self.flag, load_lock)  # share load_lock within an app
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._scorers: dict[str, Any] = {}

    def models(self) -> list[str]:
        """Model names offered by the app."""
        return self.pools.names()

    def pool(self, model: str) -> ModelPool[Any]:
        """The pool of a launch-listed model (loaded on first use)."""
        return self.pools[model]

    def preload(self, model: str) -> threading.Thread:
        """Start loading ``model``'s pool in a background thread (the app's first page then finds it loaded or
        loading). A load that fails there is left to the first request, which loads again and shows the error."""

        def load() -> None:
            try:
                self.pools[model]
            except Exception:  # noqa: BLE001 - reported by the request that needs the model
                pass

        thread = threading.Thread(target=load, name=f"dsas-preload-{model}", daemon=True)
        thread.start()
        return thread

    def checker(self, model: str) -> Callable[[Concept], object]:
        """A function raising :class:`DsasError` for a concept that does not fit ``model``."""
        raise NotImplementedError

    def concepts_for(self, model: str) -> list[str]:
        """Names of the registry's concepts that fit ``model`` (concepts of other models are left out)."""
        return self.registry.fitting(self.checker(model))

    def export(self, name: str) -> list[str]:
        """Copies of a concept's two files in a fresh temporary folder, for download."""
        return self.registry.export(name)

    def check_new(self, name: str, transform: str, scaler: str) -> bool:
        """Refuse a bad name, transform or scaler before fitting; True when the new concept will replace one of the
        user folder's."""
        ConceptConfig(name=name, transform=transform, scaler=scaler, sites=["_"], site_widths={"_": 1})
        return self.registry.check_new_name(name)

    def sweep_plan(self, strengths: dict[str, float], values: str) -> tuple[dict[Concept, float], list[float]]:
        """(the concepts of the non-zero ``strengths``, the sweep's values): a tab's strength sweep checked — the
        values parsed (0 among them), at most :data:`MAX_SWEEP_STRENGTHS`, and every strength × the largest value
        within the sliders' range."""
        from .files import strength_list

        swept = strength_list(values or "", "sweep values", "0,0.5,1,1.5,2")
        check_sweep({}, swept)
        active = {n: float(v) for n, v in strengths.items() if float(v) != 0.0}
        if not active:
            raise DsasError("every strength is 0: set the strengths to sweep (each is multiplied by every value).")
        top = max(abs(v) for v in swept)
        check_strengths({n: v * top for n, v in active.items()}, self.registry)
        return {self.registry.get(n): v for n, v in active.items()}, swept

    def scorer(self, key: str, load: Callable[[], T]) -> T:
        """A scorer of evaluations (a CLIP, a toxicity classifier) loaded once per ``key``, under the load lock
        (loading imports modules, like loading a model); ``key`` must be one of :attr:`scorers`."""
        if key not in self.scorers:
            raise DsasError(f"scorer {key!r} is not offered here: choose one of {self.scorers} (offer another at "
                            f"launch: python app.py {self.scorer_flag} SPEC).")
        with self.pools.lock:
            if key not in self._scorers:
                self._scorers[key] = load()
            return self._scorers[key]

    def cached(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """``compute()``, remembered under ``key`` (the last ``cache_size`` results): a slider move does not
        recompute the unsteered output."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = compute()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value
