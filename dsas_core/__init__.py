"""dsas_core: Dynamically Scaled Activation Steering in pure torch.

``h' = h + λ · α(h) · (T(h) − h)`` at every hooked site: T says how to steer, α when and how strongly.
This package never imports diffusers, transformers or gradio; the adapters build on it.
"""

from .collect import PooledCollector
from .concept import Concept, ConceptConfig, SiteSteer
from .errors import DsasError
from .fitting import fit_from_activations, fit_site
from .hooks import AlphaRecord, HookHandle, Site, SteeringHandle, attach, observe, refuse_compiled
from .scaler import ConstantScaler, ProbeScaler, PromptScaler, Scaler
from .transforms import ITIc, Lineas, LinearAct, MeanShift, Transform

__version__ = "0.1.0"

__all__ = [
    "AlphaRecord", "Concept", "ConceptConfig", "ConstantScaler", "DsasError", "HookHandle", "ITIc", "Lineas",
    "LinearAct", "MeanShift", "PooledCollector", "ProbeScaler", "PromptScaler", "Scaler", "Site", "SiteSteer",
    "SteeringHandle", "Transform", "attach", "fit_from_activations", "fit_site", "observe",
    "refuse_compiled",
]
