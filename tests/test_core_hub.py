"""Concepts on the Hugging Face Hub: pushed with a model card, loaded by id; the hub itself stood in for (offline)."""

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch

from dsas_core import Concept, DsasError
from dsas_core.cli import main
from dsas_core.concept import CONFIG_NAME, WEIGHTS_NAME
from dsas_core.hub import concept_pairs, is_repo_id, load_concept, model_card
from dsas_core.paths import assets_dir

NO_GREEN = assets_dir() / "concepts" / "no-green"
DETOX = assets_dir() / "concepts" / "detox"


class StandInHub:
    """Records what ``HfApi`` is asked to do and keeps a copy of every uploaded folder, by repository."""

    def __init__(self, root: Path, fail: Exception | None = None) -> None:
        self.root, self.fail, self.calls = root, fail, []

    def create_repo(self, api, repo_id, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, api, repo_id, folder_path, commit_message=None, **kwargs):
        self.calls.append(("upload_folder", repo_id, commit_message))
        if self.fail is not None:
            raise self.fail
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123",
                                          commit_message=commit_message, commit_description="", oid="abc123")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    stand_in = StandInHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda api, *a, **k: stand_in.create_repo(api, *a, **k))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda api, **k: stand_in.upload_folder(api, **k))
    return stand_in


def same_concept(a: Concept, b: Concept) -> bool:
    ta, tb = a.tensors(), b.tensors()
    return a.config.to_dict() == b.config.to_dict() and ta.keys() == tb.keys() and all(
        torch.equal(ta[k], tb[k]) for k in ta)


def test_a_pushed_concept_arrives_as_its_two_files_and_a_model_card(hub):
    concept = Concept.from_pretrained(NO_GREEN)
    url = concept.push_to_hub("me/no-green", private=True)
    assert url == "https://huggingface.co/me/no-green/commit/abc123"
    assert hub.calls == [("create_repo", "me/no-green", True, True),
                         ("upload_folder", "me/no-green", "Upload dsas concept no-green")]
    uploaded = hub.root / "me" / "no-green"
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    assert same_concept(Concept.from_pretrained(uploaded), concept)
    assert (uploaded / "README.md").read_text() == model_card(concept, "me/no-green")


def test_the_model_card_says_what_the_concept_steers_and_how_to_load_it():
    card = model_card(Concept.from_pretrained(NO_GREEN), "me/no-green").splitlines()
    assert card[:6] == ["---", "tags:", "- dsas", "- activation-steering", "- diffusers", "---"]
    assert card[6] == "# no-green"
    assert ("('a green shape' → 'a shape that is not green'): transform `mean_shift`, scaler `prompt`, at 14 sites "
            "(14 active) of the UNet2DConditionModel of a StableDiffusionPipeline.") in card[8]
    assert card[10:17] == ["```python", "from dsas_diffusion import load_concept, steer", "",
                           'concept = load_concept("me/no-green")',
                           "with steer(pipe, {concept: 1.0}):  # pipe: a model like the one it was fitted on",
                           '    image = pipe("your prompt").images[0]', "```"]
    lm = model_card(Concept.from_pretrained(DETOX), "me/detox").splitlines()
    assert lm[4] == "- transformers" and "transform `lineas`, scaler `e2e`, at 4 sites (4 active)" in lm[8]
    assert lm[11] == "from dsas_transformers import load_concept, steer"


def test_a_hub_id_downloads_only_the_concept_files(tmp_path, monkeypatch):
    asked = {}

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(NO_GREEN)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    concept = load_concept("someone/no-green", revision="v1")
    assert asked == {"repo_id": "someone/no-green", "revision": "v1", "allow_patterns": [CONFIG_NAME, WEIGHTS_NAME]}
    assert same_concept(concept, Concept.from_pretrained(NO_GREEN))


def test_a_local_folder_wins_over_a_hub_id_of_the_same_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(NO_GREEN, tmp_path / "concepts" / "mine")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the hub was asked"))
    assert load_concept("concepts/mine").name == "no-green"


def test_a_hub_id_that_cannot_be_reached_says_what_to_give(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DsasError) as err:
        load_concept("nobody/no-such-concept")
    first, fix = str(err.value).split("\n")
    assert first.startswith(f"no concept folder 'nobody/no-such-concept' under {Path.cwd()}, and as a hub repository "
                            "id: could not load concept 'nobody/no-such-concept': ")
    assert fix == ("Give a hub id you can reach or a local folder holding dsas_config.json + dsas_model.safetensors "
                   "(HF_HUB_OFFLINE is set: only models already in the local cache load).")
    with pytest.raises(DsasError, match="no concept at './missing': give a folder"):
        load_concept("./missing")


def test_a_failed_push_says_how_to_log_in_and_leaves_nothing_behind(tmp_path, monkeypatch):
    stand_in = StandInHub(tmp_path / "hub", fail=OSError("401 Client Error: Unauthorized"))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda api, *a, **k: stand_in.create_repo(api, *a, **k))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda api, **k: stand_in.upload_folder(api, **k))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(DsasError) as err:
        Concept.from_pretrained(NO_GREEN).push_to_hub("me/no-green")
    assert str(err.value).startswith("could not push concept 'no-green' to 'me/no-green': 401 Client Error: "
                                     "Unauthorized\nLog in first (`hf auth login`")
    assert [p.name for p in tmp_path.iterdir()] == []  # the staging folder is gone
    with pytest.raises(DsasError, match="repo_id must read 'owner/name'"):
        Concept.from_pretrained(NO_GREEN).push_to_hub("no-owner")


def test_dsas_push_uploads_a_folder_and_prints_the_commit(hub, capsys):
    assert main(["push", str(NO_GREEN), "me/no-green", "--message", "first"]) == 0
    out = capsys.readouterr().out
    assert out == "pushed 'no-green' to me/no-green: https://huggingface.co/me/no-green/commit/abc123\n"
    assert hub.calls == [("create_repo", "me/no-green", None, True), ("upload_folder", "me/no-green", "first")]


def test_repository_ids_are_told_from_paths():
    assert [is_repo_id(t) for t in ("owner/name", "concepts/pear", "./a/b", "/abs/x", "~/x", "a/b/c", "name", "a/")] \
        == [True, True, False, False, False, False, False, False]


def test_download_concept_asks_the_hub_even_when_a_local_folder_has_the_same_spelling(tmp_path, monkeypatch):
    from dsas_core.hub import download_concept

    monkeypatch.chdir(tmp_path)
    shutil.copytree(DETOX, tmp_path / "concepts" / "mine")
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **k: asked.append(repo_id) or str(NO_GREEN))
    assert download_concept("concepts/mine").name == "no-green"
    assert asked == ["concepts/mine"]
    with pytest.raises(DsasError, match="a hub repository id reads 'owner/name'"):
        download_concept(str(tmp_path / "concepts" / "mine"))


def test_concepts_come_as_a_mapping_or_pairs_of_concepts_folders_or_hub_ids(monkeypatch):
    concept = Concept.from_pretrained(NO_GREEN)
    for given in ({concept: 0.5, str(DETOX): 1.5}, [(concept, 0.5), (DETOX, 1.5)], ((concept, 0.5), (DETOX, 1.5))):
        pairs = concept_pairs(given)
        assert [(c.name, lam) for c, lam in pairs] == [("no-green", 0.5), ("detox", 1.5)] and pairs[0][0] is concept
    assert concept_pairs({}) == []
    monkeypatch.setattr("dsas_core.hub.download_concept", lambda repo_id, revision=None: concept)  # the hub, stood in
    assert concept_pairs({"someone/no-green": 1.0}) == [(concept, 1.0)]
    shape = "concepts must be {concept: strength} (e.g. {pear: 0.8}) or [(concept, strength), ...], got "
    refused = [([concept], f"{shape}list [Concept('no-green'"), (concept, f"{shape}Concept Concept("),
               ({3: 1.0}, "a concept is a Concept, its folder or a hub id, got int 3; load one with load_concept(dir).")]
    for given, start in refused:
        with pytest.raises(DsasError) as err:
            concept_pairs(given)
        assert str(err.value).startswith(start), given
