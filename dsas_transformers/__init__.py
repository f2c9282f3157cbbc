"""dsas_transformers: Dynamically Scaled Activation Steering for transformers causal language models.

``fit_concept(model, tokenizer, source, target, control)`` fits a concept from three text lists;
``with steer(model, {concept: 1.0}, record_alpha=True) as h: model.generate(...)`` steers every token of the
prefill and every decode step; ``h.alpha_tokens()`` shows which tokens were steered and how hard.
"""

from dsas_core.hub import load_concept

from .alpha import AlphaTokens
from .fit import collect_pooled, encode, fit_concept, position_ids_from_mask
from .sites import FAMILIES, ROLES, LMSite, lm_sites, sites_table
from .steer import LMSteering, attach, check_fits, steer

__all__ = [
    "FAMILIES", "ROLES", "AlphaTokens", "LMSite", "LMSteering", "attach", "check_fits", "collect_pooled", "encode",
    "fit_concept", "lm_sites", "load_concept", "position_ids_from_mask", "sites_table", "steer",
]
