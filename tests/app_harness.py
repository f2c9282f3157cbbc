"""Start the Gradio app in this process on a free local port, for client and browser tests."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import app as app_module  # noqa: E402
from dsas_core.registry import ConceptRegistry  # noqa: E402
from dsas_diffusion.studio import Studio  # noqa: E402
from dsas_transformers.studio import TextStudio  # noqa: E402


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(models: dict[str, Callable[[], Any]], concept_dir: Path, bundled: list[Path] | None = None,
           workers: int = 2, lms: dict[str, Callable[[], Any]] | None = None) -> tuple[Any, Studio, str]:
    """(running Blocks, its Studio, its URL); ``lms`` adds the Text tab. Close with ``blocks.close()``."""
    studio = Studio(models, ConceptRegistry(bundled or [], concept_dir), workers=workers)
    text = TextStudio(lms, studio.registry, workers=workers, load_lock=studio.pools.lock) if lms else None
    blocks = app_module.build_app(studio, text)
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return blocks, studio, f"http://127.0.0.1:{port}/"


def upload_renamed(client: Any, files: list[str], name: str, folder: Path) -> Any:
    """Upload a downloaded concept's two files under another name (its config rewritten in ``folder``)."""
    import json

    from gradio_client import handle_file

    config = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text()) | {"name": name}
    (folder / "dsas_config.json").write_text(json.dumps(config))
    weights = next(f for f in files if f.endswith(".safetensors"))
    return client.predict("demo", [handle_file(str(folder / "dsas_config.json")), handle_file(weights)],
                          api_name="/upload")


def open_page(pw: Any, url: str, chromium: str, flags: list[str]) -> tuple[Any, Any]:
    """(browser context, page) of a fresh headless chromium profile showing ``url``; close the context after."""
    import tempfile

    browser = pw.chromium.launch_persistent_context(
        tempfile.mkdtemp(prefix="dsas-chromium-"), executable_path=chromium, args=flags, headless=True,
        viewport={"width": 1280, "height": 1000})
    page = browser.new_page()
    page.goto(url)
    return browser, page
