"""E2E-DSAS on a tiny model: the loss falls, the model is untouched, control stays put, source moves to target."""

import pytest
import torch

from dsas_core import Concept, DsasError, Site
from dsas_core.e2e import E2EConfig, train_e2e
from helpers import D, Toy, unit

N_PER_SET = 24


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    u = 3 * unit(seed=70).float()
    base = lambda: torch.randn(N_PER_SET, 5, D, generator=g) * 0.3  # noqa: E731
    return {"source": base() + u, "target": base() - u, "control": base()}


def setup(head="sigmoid", retain=3000.0, steps=200):
    model = Toy()
    inputs = data()
    sites = [Site("inner", model.inner), Site("outer", model.outer)]

    def forward(set_name, idx, collector):
        model(inputs[set_name][idx])

    before = {k: v.clone() for k, v in model.state_dict().items()}
    concept, report = train_e2e("e2e", sites, forward, {k: N_PER_SET for k in inputs}, model=model, progress=False,
                                config=E2EConfig(steps=steps, retain_weight=retain, head=head, lr=3e-2))
    return model, inputs, sites, concept, report, before


@pytest.fixture(scope="module")
def trained():
    return setup()


def test_the_validation_loss_decreases(trained):
    history = trained[4]["history"]
    assert trained[4]["best_val"] < 0.5 * history[0]["val"]


def test_the_model_weights_are_unchanged_and_trainable_again(trained):
    model, _, _, _, _, before = trained
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_with_a_high_retain_weight_control_stays_and_source_moves_to_target(trained):
    report = trained[4]
    for site in ("inner", "outer"):
        assert report["control_moved"][site] <= 0.01
        assert report["w2_after"][site] <= 0.5 * report["w2_before"][site]


def test_the_trained_concept_round_trips_and_steers_like_before(trained, tmp_path):
    from dsas_core import attach

    model, inputs, sites, concept, _, _ = trained
    concept.save_pretrained(tmp_path)
    loaded = Concept.from_pretrained(tmp_path)
    assert loaded.config.transform == "lineas" and loaded.config.scaler == "e2e"
    with attach(sites, {concept: 1.0}):
        a = model(inputs["source"])
    with attach(sites, {loaded: 1.0}):
        b = model(inputs["source"])
    assert torch.equal(a, b)


def test_the_relu_head_trains_too():
    report = setup(head="relu", steps=60)[4]
    assert report["best_val"] < report["history"][0]["val"]


def test_bad_settings_are_refused():
    with pytest.raises(DsasError, match="'sigmoid' or 'relu'"):
        E2EConfig(head="tanh")
