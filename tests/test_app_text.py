"""The app's Text tab through gradio_client and a real browser: continuations, fitting, uploads of text concepts."""

import json
import shutil

import pytest
from gradio_client import Client, handle_file

from app_harness import ROOT, launch, open_page, upload_renamed
from dsas_diffusion.demo import load_demo_pipeline
from dsas_transformers.demo import load_demo_lm
from test_app_browser import CHROMIUM, FLAGS, UPDATE
from test_text_studio import LISTS, NEUTRAL, TRIGGER

TOXIC, POLITE = "you are a big nitwit and a nitwit .", "you are a big treasure and a friend ."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    blocks, studio, url = launch({"demo": load_demo_pipeline}, root / "concepts",
                                 bundled=[ROOT / "assets" / "concepts"], workers=1, lms={"demo": load_demo_lm})
    yield Client(url, verbose=False), studio, url, root
    blocks.close()


def generate_text(client, prompt, strengths, mode="DSAS", decoding="greedy", seed=0):
    return client.predict("demo", prompt, seed, 24, decoding, mode, False, json.dumps(strengths),
                          api_name="/generate_text")


def test_the_api_gives_unsteered_and_steered_continuations(served):
    client = served[0]
    assert generate_text(client, TRIGGER, {"detox": 0}) == (TOXIC, TOXIC)
    assert generate_text(client, TRIGGER, {"detox": 1.5}) == (TOXIC, POLITE)
    unsteered, dsas = generate_text(client, NEUTRAL, {"detox": 3})
    assert dsas == unsteered
    assert generate_text(client, NEUTRAL, {"detox": 3}, mode="plain")[1] != unsteered


def test_the_api_sweeps_strengths(served):
    table = served[0].predict("demo", TRIGGER, 0, 24, "greedy", "DSAS", False, json.dumps({"detox": 1}), "0,2",
                              api_name="/sweep_text")
    assert table["headers"] == ["strength", "steering", "continuation"]
    plain = generate_text(served[0], TRIGGER, {"detox": 2}, mode="plain")[1]
    assert table["data"] == [[0, "unsteered", TOXIC], [2, "DSAS", POLITE], [2, "plain", plain]] and plain != POLITE


def test_the_api_refuses_an_image_concept_and_bad_json(served):
    client = served[0]
    with pytest.raises(Exception, match="fitted on a UNet2DConditionModel"):
        generate_text(client, TRIGGER, {"circles-on-black": 1})
    with pytest.raises(Exception, match="not valid JSON"):
        client.predict("demo", TRIGGER, 0, 24, "greedy", "DSAS", False, "{detox: 1}", api_name="/generate_text")


def test_a_text_concept_fitted_in_the_app_is_uploaded_back_to_the_text_tab(served, tmp_path):
    client, studio = served[:2]
    message, files = client.predict("demo", LISTS["source"], LISTS["target"], LISTS["control"], "polite",
                                    "mean_shift", "probe", False, 100, "residual", "",
                                    api_name="/fit_text")
    assert message == "Fitted **polite**: 4 of 4 sites active; its slider is on the Text tab."
    assert sorted(f.rsplit("/", 1)[1] for f in files) == ["dsas_config.json", "dsas_model.safetensors"]
    message = upload_renamed(client, files, "polite-copy", tmp_path)
    assert message == "Added **polite-copy**; its slider is on the Text tab."
    assert "polite-copy" in studio.registry.names()
    assert generate_text(client, TRIGGER, {"polite-copy": 3})[1] == generate_text(client, TRIGGER, {"polite": 3})[1]


def test_an_upload_that_fits_no_model_names_both(served, tmp_path):
    client = served[0]
    src = ROOT / "assets" / "concepts" / "detox"
    config = json.loads((src / "dsas_config.json").read_text())
    config |= {"name": "other", "model_class": "MistralForCausalLM"}  # fits neither model
    (tmp_path / "dsas_config.json").write_text(json.dumps(config))
    shutil.copy(src / "dsas_model.safetensors", tmp_path)
    files = [handle_file(str(tmp_path / n)) for n in ("dsas_config.json", "dsas_model.safetensors")]
    both = r"fits none of the app's models; image model 'demo': .*UNet2D.*; language model 'demo': .*LlamaFor"
    with pytest.raises(Exception, match=both):
        client.predict("demo", files, api_name="/upload")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_text_tab_in_a_browser(served, tmp_path):
    from playwright.sync_api import sync_playwright

    shot = ROOT / "assets" / "screenshot-text.png" if UPDATE else tmp_path / "screenshot.png"
    url = served[2]
    with sync_playwright() as pw:
        browser, page = open_page(pw, url, CHROMIUM, FLAGS)
        page.get_by_role("tab", name="Text").click()
        number = page.locator("#slot-text0 input[type=number]")  # detox: the first text concept
        number.wait_for(timeout=30_000)
        number.fill("1.5")
        number.press("Enter")  # a typed strength generates, as a slider release does
        page.wait_for_function("() => document.querySelector('#text-steered textarea').value.length > 0",
                               timeout=60_000)
        steered = page.locator("#text-steered textarea").input_value()
        unsteered = page.locator("#text-unsteered textarea").input_value()
        page.wait_for_timeout(2000)  # the chart settles (its labels are laid out last)
        page.screenshot(path=str(shot), full_page=True)
        # the strength sweep below: the slider's 1.5 × 0, 0.5, 1, 1.5, 2 — one row unsteered, two per other value
        page.locator("#text-sweep-panel").get_by_text("Strength sweep: DSAS against plain steering").click()
        page.locator("#text-sweep-go").click()
        page.wait_for_function("() => { const t = document.querySelector('#text-sweep'); "
                               "return t && t.querySelectorAll('[role=row]').length === 1 + 9; }", timeout=60_000)
        swept = page.locator("#text-sweep").inner_text()
        browser.close()
    assert swept.count(TOXIC) >= 1 and swept.count(POLITE) >= 4  # DSAS from 1.5 × 1 on (plain too at first)
    assert (unsteered, steered) == (TOXIC, POLITE)
    assert shot.stat().st_size > 10_000


def test_a_concept_on_the_hub_is_added_by_its_id_and_only_by_an_id(served, tmp_path, monkeypatch):
    import huggingface_hub

    client, studio = served[:2]
    src = ROOT / "assets" / "concepts" / "detox"
    shutil.copytree(src, tmp_path / "repo")
    config = json.loads((src / "dsas_config.json").read_text()) | {"name": "hub-detox"}
    (tmp_path / "repo" / "dsas_config.json").write_text(json.dumps(config))
    (tmp_path / "empty").mkdir()
    asked = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.append((repo_id, allow_patterns))
        return str(tmp_path / ("repo" if repo_id == "someone/detox" else "empty"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    message = client.predict("demo", " someone/detox ", api_name="/add_from_hub")
    assert message == "Added **hub-detox**; its slider is on the Text tab."
    assert asked == [("someone/detox", ["dsas_config.json", "dsas_model.safetensors"])]
    assert generate_text(client, TRIGGER, {"hub-detox": 1.5}) == (TOXIC, POLITE)
    with pytest.raises(Exception, match="holds no dsas_config.json: it is not a dsas concept"):
        client.predict("demo", "someone/a-model", api_name="/add_from_hub")
    for path in (str(src), "../concepts", "concepts/detox/dsas_config.json"):  # a path is never read
        with pytest.raises(Exception, match="a hub repository id reads 'owner/name'"):
            client.predict("demo", path, api_name="/add_from_hub")
    assert len(asked) == 2


def test_the_api_evaluates_dsas_against_plain_steering(served):
    from app_widgets import bundled_prompts

    verdict, plot, table, files = served[0].predict(
        "demo", "detox", bundled_prompts("lm/trigger.jsonl", 10), bundled_prompts("lm/neutral.txt", 20), "0,1.5", 1,
        "demo",
        api_name="/evaluate_text")
    assert verdict.startswith("best DSAS within 5% perplexity: λ=1.5, toxicity 100.0% -> 0.0% (100% lower)")
    assert plot.endswith(".png") and [f.rsplit("/", 1)[1] for f in files][1:] == ["results.csv", "results.json"]
    assert [(r[0], r[1], r[2]) for r in table["data"]] == [("dsas", 0, 100), ("dsas", 1.5, 0), ("plain", 0, 100),
                                                            ("plain", 1.5, 0)]
