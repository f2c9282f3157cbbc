"""Concepts round-trip through safetensors + JSON exactly, and bad files are refused with clear errors."""

import json
import subprocess
import sys
import warnings

import pytest
import torch

from dsas_core import Concept, ConceptConfig, DsasError
from dsas_core.cli import main
from dsas_core.concept import CONFIG_NAME, WEIGHTS_NAME
from test_core_hooks import make_concept


@pytest.mark.parametrize("transform", ["mean_shift", "itic", "linear_act", "lineas"])
@pytest.mark.parametrize("scaler", ["probe", "constant"])
def test_save_then_load_round_trips_every_tensor_exactly(tmp_path, transform, scaler):
    concept = make_concept(sites=("inner", "outer"), transform=transform, scaler=scaler)
    concept.config.source_text, concept.config.target_text = "a red shape", "a blue shape"
    concept.save_pretrained(tmp_path / "c")
    loaded = Concept.from_pretrained(tmp_path / "c")
    a, b = concept.tensors(), loaded.tensors()
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config == concept.config
    assert [s.scaler.gated for s in loaded.sites.values()] == [s.scaler.gated for s in concept.sites.values()]


def test_saving_leaves_no_temporary_files(tmp_path):
    make_concept().save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_a_truncated_weights_file_is_refused(tmp_path):
    make_concept().save_pretrained(tmp_path)
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(DsasError, match="corrupt or truncated"):
        Concept.from_pretrained(tmp_path)


def test_a_corrupt_config_is_refused(tmp_path):
    make_concept().save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(DsasError, match="is corrupt"):
        Concept.from_pretrained(tmp_path)


def test_a_missing_file_is_named(tmp_path):
    make_concept().save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(DsasError, match="dsas_model.safetensors is missing"):
        Concept.from_pretrained(tmp_path)


def test_weights_from_another_concept_are_refused(tmp_path):
    make_concept(sites=("inner",)).save_pretrained(tmp_path / "a")
    make_concept(sites=("outer",)).save_pretrained(tmp_path / "b")
    (tmp_path / "b" / WEIGHTS_NAME).replace(tmp_path / "a" / WEIGHTS_NAME)
    with pytest.raises(DsasError, match="does not match its config"):
        Concept.from_pretrained(tmp_path / "a")


def test_nan_in_saved_tensors_is_refused(tmp_path):
    concept = make_concept()
    concept.sites["inner"].transform.shift[3] = float("nan")
    concept.save_pretrained(tmp_path)
    with pytest.raises(DsasError, match="NaN or inf"):
        Concept.from_pretrained(tmp_path)


def test_unknown_config_keys_warn_and_are_dropped(tmp_path):
    make_concept().save_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    data["from_the_future"] = 1
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="from_the_future"):
        loaded = Concept.from_pretrained(tmp_path)
    assert loaded.name == "c"


def test_a_concept_for_other_sites_or_widths_is_refused():
    concept = make_concept(sites=("inner",))
    with pytest.raises(DsasError, match="sites this model does not have"):
        concept.check_fits({"other": 64})
    with pytest.raises(DsasError, match="width 32 here but 64 in the concept"):
        concept.check_fits({"inner": 32})
    concept.config.model_class = "UNet2DConditionModel"
    with pytest.raises(DsasError, match="fitted on a UNet2DConditionModel"):
        concept.check_fits({"inner": 64}, model_class="SD3Transformer2DModel")
    concept.check_fits({"inner": 64}, model_class="UNet2DConditionModel")


@pytest.mark.parametrize("change, message", [
    ({"name": "bad name!"}, "concept name"),
    ({"transform": "caa"}, "unknown transform 'caa'"),
    ({"scaler": "probes"}, "unknown scaler 'probes'"),
    ({"sites": []}, "non-empty list"),
    ({"gate": 1.5}, "gate must lie in"),
])
def test_invalid_configs_are_refused_on_construction(change, message):
    base = dict(name="ok", transform="mean_shift", scaler="probe", sites=["s"], site_widths={"s": 4})
    with pytest.raises(DsasError, match=message):
        ConceptConfig(**(base | change))


def test_importing_the_core_loads_no_adapter_library():
    code = ("import sys, dsas_core; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('diffusers', 'transformers', 'gradio', 'dsas_diffusion', 'dsas_transformers')]; print(len(bad), bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0 []"


def test_dsas_inspect_prints_sites_and_gates(tmp_path, capsys):
    make_concept(sites=("inner", "outer")).save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sites       2 (2 active, 0 gated off)" in out
    assert "1.000" in out


def test_dsas_inspect_on_a_corrupt_concept_exits_2_with_the_reason(tmp_path, capsys):
    make_concept().save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[]")
    with warnings.catch_warnings():
        assert main(["inspect", str(tmp_path)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_to_moves_every_tensor_in_place_and_returns_the_concept():
    concept = make_concept()

    def held() -> dict[str, torch.Tensor]:
        return {f"{site}.{part}.{k}": t for site, steer in concept.sites.items()
                for part, module in (("transform", steer.transform), ("scaler", steer.scaler))
                for k, t in [*module.named_parameters(), *module.named_buffers()]}

    shapes = {k: t.shape for k, t in held().items()}
    assert concept.to("meta") is concept  # a device every machine has (the values stay behind)
    assert {t.device.type for t in held().values()} == {"meta"}
    assert {k: t.shape for k, t in held().items()} == shapes and len(shapes) >= 4


def test_weights_files_are_byte_identical_across_saves_with_metadata_in_key_order(tmp_path):
    concept = make_concept()
    concept.save_pretrained(tmp_path / "a")
    concept.save_pretrained(tmp_path / "b")
    raw = (tmp_path / "a" / WEIGHTS_NAME).read_bytes()
    assert raw == (tmp_path / "b" / WEIGHTS_NAME).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert b'"__metadata__":{"dsas_concept":"c","format":"pt"}' in raw[8:8 + n]  # the library's order is random
    loaded = Concept.from_pretrained(tmp_path / "a")
    assert all(torch.equal(loaded.tensors()[k], v) for k, v in concept.tensors().items())
