"""E2E-DSAS through the diffusion adapter: recorded denoiser calls replayed with gradients on a tiny SD."""

import pytest
import torch

from dsas_core import Concept, DsasError
from dsas_core.e2e import E2EConfig
from dsas_diffusion import fit_concept, steer
from tiny_diffusion import run, tiny_sd

THINGS = ["cat", "dog", "house", "tree", "car", "boat", "chair", "lamp"]
SRC = [f"a ripe yellow banana fruit beside a {t}" for t in THINGS]
TGT = [f"a ripe green pear fruit beside a {t}" for t in THINGS]
CTL = [f"a plain photo of a {t} at night" for t in THINGS]


@pytest.fixture(scope="module")
def trained():
    pipe = tiny_sd()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    concept = fit_concept(pipe, SRC, TGT, CTL, transform="lineas", scaler="e2e", name="e2e", num_inference_steps=2,
                          progress=False, e2e=E2EConfig(steps=40, lr=3e-2, retain_weight=100.0))
    return pipe, concept, before


def test_e2e_on_a_unet_leaves_its_weights_unchanged(trained):
    pipe, _, before = trained
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


def test_e2e_moves_steered_source_toward_target(trained):
    diag = trained[1].config.diagnostics
    moved = [d["w2_after"] / d["w2_before"] for d in diag.values()]
    assert sum(moved) / len(moved) < 0.7


def test_an_e2e_concept_round_trips_and_steers_the_pipeline(trained, tmp_path):
    pipe, concept, _ = trained
    concept.save_pretrained(tmp_path)
    loaded = Concept.from_pretrained(tmp_path)
    before = run(pipe, SRC[:1])
    with steer(pipe, {loaded: 1.0}):
        steered = run(pipe, SRC[:1])
    with steer(pipe, {loaded: 0.0}):
        zero = run(pipe, SRC[:1])
    assert torch.equal(zero, before) and (steered - before).abs().max().item() > 1e-4


def test_e2e_and_lineas_go_together():
    with pytest.raises(DsasError, match="'lineas' transform together with the 'e2e' scaler"):
        fit_concept(tiny_sd(), SRC, TGT, CTL, transform="lineas", scaler="probe", progress=False)
