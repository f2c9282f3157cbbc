"""E2E-DSAS through the transformers adapter: fit with transform="lineas", scaler="e2e" on a tiny Llama."""

import pytest
import torch

from dsas_core import Concept, DsasError
from dsas_core.e2e import E2EConfig
from dsas_transformers import fit_concept, steer
from dsas_transformers.testing import tiny_model
from test_llm_planted import TOK, make


@pytest.fixture(scope="module")
def trained():
    model = tiny_model("llama", len(TOK), hidden=32, layers=2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    concept = fit_concept(model, TOK, make(24, 1, True), make(24, 2, False), make(24, 3, False), name="e2e",
                          transform="lineas", scaler="e2e", progress=False,
                          e2e=E2EConfig(steps=80, lr=3e-2, retain_weight=100.0))
    return model, concept, before


def test_e2e_fitting_leaves_the_model_weights_unchanged(trained):
    model, _, before = trained
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_e2e_moves_source_toward_target_at_every_site(trained):
    diag = trained[1].config.diagnostics
    assert all(d["w2_after"] < 0.5 * d["w2_before"] for d in diag.values())
    assert all(d["control_moved"] < 0.1 for d in diag.values())


def test_an_e2e_concept_round_trips_and_steers_generate(trained, tmp_path):
    model, concept, _ = trained
    concept.save_pretrained(tmp_path)
    loaded = Concept.from_pretrained(tmp_path)
    ids = torch.tensor([TOK.convert_tokens_to_ids(["zebra", "quantum", "lantern", "violet", "the"])])
    with steer(model, {concept: 1.0}):
        a = model(ids).logits
    with steer(model, {loaded: 1.0}):
        b = model(ids).logits
    assert torch.equal(a, b) and not torch.equal(a, model(ids).logits)


def test_e2e_needs_the_lineas_transform():
    with pytest.raises(DsasError, match="'lineas' transform together with the 'e2e' scaler"):
        fit_concept(tiny_model("llama", len(TOK)), TOK, make(8, 1, True), make(8, 2, False), make(8, 3, False),
                    transform="mean_shift", scaler="e2e", progress=False)
