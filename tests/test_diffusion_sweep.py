"""Strength sweeps: `sweep_images`, `labelled_grid` and `dsas generate --sweep` on the bundled demo model."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsas_core import DsasError
from dsas_core.cli import main
from dsas_diffusion import load_concept, load_demo_pipeline, steer
from dsas_diffusion.sweep import labelled_grid, sweep_images, sweep_rows

CONCEPT = Path(__file__).resolve().parents[1] / "assets" / "concepts" / "circles-on-black"
SQUARE = "a blue square on a yellow background"  # a control prompt: DSAS leaves it, plain steering does not


@pytest.fixture(scope="module")
def pipe():
    return load_demo_pipeline()


def _run(pipe, prompt=SQUARE):
    return lambda: pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images[0]


def _pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_sweep_images_match_separate_runs_and_leave_no_hooks(pipe):
    concept = load_concept(CONCEPT)
    run = _run(pipe)
    unsteered = _pixels(run())
    images, overlays = sweep_images(pipe, {concept: 2.0}, [0.0, 0.5, 1.5], run, adaptive=False)
    assert overlays == []
    with steer(pipe, {concept: 3.0}, adaptive=False):  # strength 2 × 1.5
        separate = _pixels(run())
    assert np.array_equal(_pixels(images[0]), unsteered)  # λ = 0: the unsteered image, bit for bit
    assert np.array_equal(_pixels(images[2]), separate)
    assert np.abs(_pixels(images[1]) - unsteered).max() > 50  # plain steering moves this control prompt
    assert np.array_equal(_pixels(run()), unsteered)  # detached afterwards


def test_sweep_records_one_alpha_map_per_image(pipe):
    concept = load_concept(CONCEPT)
    images, overlays = sweep_images(pipe, {concept: 1.0}, [0.0, 2.0], _run(pipe), record_alpha=True)
    assert len(overlays) == 2 and all(o.size == images[0].size for o in overlays)
    with pytest.raises(DsasError, match="no concepts given"):
        sweep_images(pipe, {}, [0.0, 1.0], _run(pipe))
    with pytest.raises(DsasError, match="at least one strength"):
        sweep_images(pipe, {concept: 1.0}, [], _run(pipe))
    assert np.array_equal(_pixels(_run(pipe)()), _pixels(images[0]))  # nothing left attached by the refusal


def test_sweep_rows_make_the_unsteered_image_once_and_match_single_sweeps(pipe):
    concept = load_concept(CONCEPT)
    calls = []
    run = _run(pipe)

    def counted():
        calls.append(1)
        return run()

    rows, overlays = sweep_rows(pipe, {concept: 1.0}, [-1.0, 0.0, 2.0], counted, ["plain", "DSAS"])
    assert [m for m, _ in rows] == ["plain", "DSAS"] and len(calls) == 3 + 2 and overlays == []
    plain, _ = sweep_images(pipe, {concept: 1.0}, [-1.0, 0.0, 2.0], run, adaptive=False)
    dsas, _ = sweep_images(pipe, {concept: 1.0}, [-1.0, 2.0], run)
    assert [_pixels(i).tolist() for i in rows[0][1]] == [_pixels(i).tolist() for i in plain]
    assert [_pixels(i).tolist() for i in rows[1][1]] == [_pixels(i).tolist() for i in (dsas[0], plain[1], dsas[1])]
    with pytest.raises(DsasError, match=r"unknown steering \['linear'\]: choose from \['DSAS', 'plain'\]"):
        sweep_rows(pipe, {concept: 1.0}, [0.0, 1.0], run, ["DSAS", "linear"])


def test_labelled_grid_places_every_image_behind_its_labels():
    red, blue = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (20, 10), (0, 0, 255))
    grid = labelled_grid([("DSAS", [red, blue, red]), ("plain", [blue, red, blue])], ["0", "1", "2"])
    pixels = _pixels(grid)
    band, margin = grid.height - 2 * 10, grid.width - 3 * 20
    assert band > 0 and margin > 0
    for row, colours in enumerate([[red, blue, red], [blue, red, blue]]):
        for col, image in enumerate(colours):
            cell = pixels[band + row * 10: band + (row + 1) * 10, margin + col * 20: margin + (col + 1) * 20]
            assert np.array_equal(cell, _pixels(image))
    assert (pixels[:band] < 128).any() and (pixels[band:, :margin] < 128).any()  # text in both bands
    with pytest.raises(DsasError, match="rows of 3 images"):
        labelled_grid([("DSAS", [red, blue])], ["0", "1", "2"])
    with pytest.raises(DsasError, match="differ in size"):
        labelled_grid([("DSAS", [red, red.resize((10, 10))])], ["0", "1"])


def test_labelled_grid_resizes_each_image_to_the_cell():
    checker = Image.fromarray(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((2, 3), np.uint8))).convert("RGB")
    assert checker.size == (6, 4)
    small, large = (labelled_grid([("DSAS", [checker])], ["1"], cell=cell) for cell in (3, 12))
    assert (small.width - 3, small.height - 2) == (large.width - 12, large.height - 8)  # same bands
    band, margin = large.height - 8, large.width - 12
    cell = _pixels(large)[band:, margin:, 0]  # enlarged by nearest pixel: each pixel a 2 × 2 block
    assert np.array_equal(cell, np.kron(_pixels(checker)[..., 0], np.ones((2, 2), np.int16)))
    with pytest.raises(DsasError, match="at least 1 pixel"):
        labelled_grid([("DSAS", [checker])], ["1"], cell=0)


def test_generate_sweep_writes_the_row_the_alpha_row_and_dsas_above_plain(tmp_path, capsys):
    out, both, alpha = tmp_path / "sweep.png", tmp_path / "both.png", tmp_path / "alpha.png"
    args = ["generate", "--model", "demo", "--prompt", SQUARE, "--steps", "3", "--concept", str(CONCEPT)]
    assert main(args + ["--sweep", "2,1", "--out", str(out), "--compare", str(both), "--alpha-map", str(alpha)]) == 0
    printed = capsys.readouterr().out
    assert all(f"wrote {p}" in printed for p in (out, both, alpha))
    row, grid = _pixels(Image.open(out)), _pixels(Image.open(both))
    side = grid.shape[0] - row.shape[0]  # one row more: the demo model's image side
    band, margin = row.shape[0] - side, row.shape[1] - 3 * side  # columns 0, 1, 2
    assert side == 32 and band > 0 and margin > 0 and grid.shape[1] == row.shape[1]
    assert Image.open(alpha).size == Image.open(out).size
    cells = [[grid[band + r * side: band + (r + 1) * side, margin + c * side: margin + (c + 1) * side]
              for c in range(3)] for r in range(2)]
    assert np.array_equal(grid[: band + side], row)  # --out is the DSAS row of --compare
    assert np.array_equal(cells[0][0], cells[1][0])  # λ = 0: the same unsteered image in both rows
    dsas_moved = max(np.abs(cells[0][c] - cells[0][0]).mean() for c in (1, 2))
    plain_moved = min(np.abs(cells[1][c] - cells[1][0]).mean() for c in (1, 2))
    assert plain_moved > 4 * dsas_moved  # on a control prompt plain steering changes the image, DSAS barely


def test_generate_sweep_explains_bad_input_before_loading_a_model(tmp_path, capsys):
    args = ["generate", "--model", str(tmp_path / "no-model"), "--prompt", SQUARE, "--out", str(tmp_path / "s.png")]
    assert main(args + ["--sweep", "0,1"]) == 2
    assert "--sweep scales the strengths of the --concept folders" in capsys.readouterr().err
    assert main(args + ["--concept", str(CONCEPT), "--sweep", "0"]) == 2
    assert "--sweep '0' holds no strength but 0" in capsys.readouterr().err
    assert main(args + ["--concept", str(CONCEPT), "--sweep", "1,x"]) == 2
    assert "give comma-separated numbers, e.g. 0,0.5,1,1.5" in capsys.readouterr().err
    assert main(args + ["--concept", str(CONCEPT), "--cell", "96"]) == 2
    assert "--cell 96: it sizes the images of a --sweep grid; add --sweep" in capsys.readouterr().err
    assert main(args + ["--concept", str(CONCEPT), "--sweep", "1", "--cell", "0"]) == 2
    assert "--cell 0: give a side of at least 1 pixel." in capsys.readouterr().err
    assert main(args + ["--concept", str(CONCEPT), "--sweep", "1", "--compare", str(tmp_path / "no" / "c.png")]) == 2
    assert "--compare" in capsys.readouterr().err and not (tmp_path / "s.png").exists()
