"""A real browser (Debian's chromium driven by Playwright) loads the app, moves a slider and sees a new image."""

import os
import shutil
from pathlib import Path

import pytest

from app_harness import ROOT, launch, open_page
from dsas_diffusion.demo import load_demo_pipeline
from dsas_diffusion.studio import MAX_STRENGTH, SWEEP_CELL
from dsas_transformers.demo import load_demo_lm

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SRC = "\n".join(f"a {c} circle on a {b} background" for c in COLOURS for b in ("white", "orange") if b != c)
TGT = "\n".join(f"a {c} circle on a black background" for c in COLOURS for b in ("white", "orange") if b != c)
CTL = "\n".join(f"a {c} {s} on a {b} background" for c in COLOURS for s in ("square", "cross") for b in ("white",))

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
UPDATE = os.environ.get("DSAS_UPDATE_SCREENSHOT") == "1"  # write the README's screenshot into assets/


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_page_loads_a_slider_move_shows_a_new_steered_image(tmp_path):
    shot = ROOT / "assets" / "screenshot.png" if UPDATE else tmp_path / "screenshot.png"
    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    blocks, studio, url = launch({"demo": load_demo_pipeline}, tmp_path / "concepts",
                                 bundled=[ROOT / "assets" / "concepts"],  # the examples beside the new one
                                 lms={"demo": load_demo_lm})  # the whole app: its Text tab too
    try:
        Client(url, verbose=False).predict("demo", SRC, TGT, CTL, "black-background", "mean_shift", "prompt", "",
                                           "", api_name="/fit")
        slot = studio.concepts_for("demo").index("black-background")
        with sync_playwright() as pw:
            browser, page = open_page(pw, url, CHROMIUM, FLAGS)
            slider = page.locator(f"#slot{slot} input[type=range]")
            slider.wait_for(timeout=30_000)
            page.get_by_role("button", name="Generate").click()
            steered = page.locator("#steered img")
            steered.wait_for(timeout=60_000)
            first = steered.get_attribute("src")
            box = slider.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            to = 0.5 + 2.0 / (2 * MAX_STRENGTH)  # λ ≈ 2 on a −MAX..MAX slider
            page.mouse.move(box["x"] + box["width"] * to, box["y"] + box["height"] / 2, steps=5)
            page.mouse.up()
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#steered img'); return i && i.src !== old; }",
                arg=first, timeout=60_000)
            value = float(page.locator(f"#slot{slot} input[type=number]").input_value())
            # a strength typed into the slider's box and Enter regenerate, as leaving the box does
            moved = steered.get_attribute("src")
            number = page.locator(f"#slot{slot} input[type=number]")
            number.fill("4")
            number.press("Enter")
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#steered img'); return i && i.src !== old; }",
                arg=moved, timeout=60_000)
            typed = float(number.input_value())
            # Enter in the prompt box generates both images for the new prompt
            unsteered = page.locator("#unsteered img").get_attribute("src")
            prompt = page.get_by_label("prompt", exact=True)
            prompt.fill("a red square on a white background")
            prompt.press("Enter")
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#unsteered img'); return i && i.src !== old; }",
                arg=unsteered, timeout=60_000)
            # the README's picture: a bundled concept at a moderate strength, the new one back at 0
            steered_src = steered.get_attribute("src")
            for name, strength in (("black-background", "0"), ("circles-on-black", "1")):
                box = page.locator(f"#slot{studio.concepts_for('demo').index(name)} input[type=number]")
                box.fill(strength)
                box.press("Enter")
            prompt.fill("a red circle on a white background")
            prompt.press("Enter")
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#steered img'); return i && i.src !== old; }",
                arg=steered_src, timeout=60_000)
            page.wait_for_timeout(3000)  # the last request's images and the chart settle (labels are laid out last)
            page.screenshot(path=str(shot), full_page=True)
            # the strength sweep: the sliders' strengths × each value, DSAS's row above plain steering's
            page.get_by_text("Strength sweep: DSAS against plain steering").click()
            page.get_by_role("button", name="Sweep", exact=True).click()
            page.locator("#sweep img").wait_for(timeout=60_000)
            swept = page.locator("#sweep img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
            browser.close()
        assert swept[0] > 5 * SWEEP_CELL and swept[1] > 2 * SWEEP_CELL  # 0, 0.5, 1, 1.5, 2 in two rows
        assert value > 0.5
        assert typed == 4.0
        assert Path(shot).stat().st_size > 10_000
    finally:
        blocks.close()

