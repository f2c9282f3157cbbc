"""`dsas studio` starts the checkout's app, handing it every flag as typed."""

import pytest

from dsas_core.cli import main


def test_dsas_studio_hands_every_flag_to_the_app_in_order(capsys):
    with pytest.raises(SystemExit) as done:
        main(["studio", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dsas studio [-h] [--model MODEL] [--lm LM] [--no-text]")
    assert "python app.py --lm demo --lm Qwen/Qwen2.5-1.5B" in out
    with pytest.raises(SystemExit) as done:  # the app's own check, so the flags arrived as typed
        main(["studio", "--lm", "demo", "--no-text"])
    assert done.value.code == 2
    assert capsys.readouterr().err.endswith("error: --no-text leaves the Text tab out: drop it to serve the --lm "
                                            "models\n")
    with pytest.raises(SystemExit):  # other commands still refuse flags they do not know
        main(["inspect", "assets/concepts/detox", "--no-text"])
    assert "unrecognized arguments: --no-text" in capsys.readouterr().err


def test_an_install_without_the_repository_says_where_the_demo_and_the_app_come_from(monkeypatch, tmp_path, capsys):
    import dsas_core.paths
    import dsas_diffusion.demo.loading
    import dsas_transformers.demo.model
    from dsas_core import DsasError
    from dsas_diffusion.demo import load_demo_pipeline
    from dsas_transformers.demo import load_demo_lm

    nowhere = tmp_path / "site-packages" / "assets"  # an installed wheel: no assets/ beside the packages
    for module in (dsas_core.paths, dsas_diffusion.demo.loading, dsas_transformers.demo.model):
        monkeypatch.setattr(module, "assets_dir", lambda: nowhere)
    fix = "does not exist): clone the repository and install it with `pip install -e .`"
    for load, what in ((load_demo_pipeline, "the bundled demo model"), (load_demo_lm, "the bundled demo LM")):
        with pytest.raises(DsasError) as err:
            load()
        assert str(err.value).startswith(f"{what} ships with the repository, not with the installed package "
                                         f"({nowhere} {fix}")
    assert main(["studio"]) == 2
    assert "dsas studio (app.py and the demo models it serves) ships with the repository" in capsys.readouterr().err
    assert main(["llm", "generate", "--model", "demo", "--prompt", "hello"]) == 2
    assert "error: the bundled demo LM ships with the repository" in capsys.readouterr().err
    with pytest.raises(DsasError, match="missing open_clip_config.json"):  # a folder the caller names is theirs
        dsas_diffusion.demo.loading.load_demo_clip(path=tmp_path)


def test_the_app_launches_with_the_flags_given_and_preloads_each_tabs_first_model(monkeypatch, tmp_path):
    import gradio as gr

    import app
    from dsas_core.registry import StudioBase

    launched, preloaded = [], []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    monkeypatch.setattr(StudioBase, "preload", lambda self, model: preloaded.append((type(self).__name__, model)))
    app.main(["--port", "7999", "--share", "--concept-dir", str(tmp_path), "--lm", "demo"])
    assert launched == [{"server_name": "127.0.0.1", "server_port": 7999, "share": True}]
    assert preloaded == [("Studio", "demo"), ("TextStudio", "demo")]
    app.main(["--no-text", "--concept-dir", str(tmp_path)])
    assert launched[1] == {"server_name": "127.0.0.1", "server_port": 7860, "share": False}
    assert preloaded[2:] == [("Studio", "demo")]
