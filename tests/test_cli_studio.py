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
