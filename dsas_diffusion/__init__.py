"""dsas for diffusers: fit concepts from prompt lists and steer any supported pipeline with them.

```python
from dsas_diffusion import fit_concept, steer, load_concept
pear = fit_concept(pipe, source=fruit, target=fruit_with_pear, control=other, name="pear")
with steer(pipe, {pear: 0.8}, record_alpha=True) as handle:
    image = pipe("a still life on a table").images[0]
heat = handle.alpha_heatmap()
```
"""

from .fit import fit_concept
from .pipeline import DiffusionHandle, attach, check_concept_fits, load_concept, steer
from .sites import candidates, denoiser_of, select_sites, site_widths


def load_demo_pipeline(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201
    """The bundled tiny text-to-image pipeline (see :mod:`dsas_diffusion.demo`)."""
    from .demo import load_demo_pipeline as load

    return load(*args, **kwargs)


__all__ = [
    "DiffusionHandle", "attach", "candidates", "check_concept_fits", "denoiser_of", "fit_concept", "load_concept",
    "load_demo_pipeline", "select_sites", "site_widths", "steer",
]
