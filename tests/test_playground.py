"""The playground page in a real browser (Debian's chromium driven by Python playwright).

Moves a slider, asks a question, waits for the streamed answer and saves a screenshot.
By default it serves a tiny random model (its answer is noise) and writes the screenshot to
the test's tmp folder. For the screenshot in docs/, run it on the bundled model:

    EMOSTEER_PLAYGROUND_MODEL=default EMOSTEER_PLAYGROUND_VECTORS=vectors \\
    EMOSTEER_SCREENSHOT=docs/playground.png .venv/bin/python -m pytest tests/test_playground.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import byte_tokenizer, tiny_model
from live_server import live_server, random_vectors

pytest.importorskip("fastapi")
CHROMIUM = os.environ.get("EMOSTEER_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _served():
    from emosteer.server import ServeConfig, create_app

    spec = os.environ.get("EMOSTEER_PLAYGROUND_MODEL")
    if spec:
        from emosteer.models import load_model
        from emosteer.vectors import EmotionVector

        model, tok = load_model(spec)
        folder = Path(os.environ.get("EMOSTEER_PLAYGROUND_VECTORS", "vectors"))
        vectors = {f.stem: EmotionVector.load(f) for f in sorted(folder.glob("*.safetensors"))}
    else:
        model, tok = tiny_model("llama"), byte_tokenizer()
        vectors = random_vectors(model)
    return create_app(model, tok, vectors, ServeConfig(max_tokens=128, batch_window=0.0))


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"chromium is not installed at "
                    f"{CHROMIUM} (`apt-get install chromium`; .ci/run installs it)")
def test_playground_slider_question_streamed_answer(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    shot = Path(os.environ.get("EMOSTEER_SCREENSHOT", tmp_path / "playground.png"))
    profile = tmp_path / "chromium-profile"
    with live_server(_served()) as url, sync_api.sync_playwright() as pw:
        # a fresh profile each run (playwright passes it as --user-data-dir)
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 760})
        try:
            page = browser.new_page()
            requests: list[dict] = []
            page.on("request", lambda r: requests.append(json.loads(r.post_data))
                    if r.url.endswith("/v1/chat/completions") else None)
            page.goto(url + "/")
            slider = page.locator("#s-joy")
            slider.wait_for(timeout=30_000)
            page.locator("#s-anger").wait_for()
            slider.fill("1.5")  # sets the range input and fires its input event
            page.locator("#s-anger").fill("-0.5")
            assert json.loads(page.locator("#mix").inner_text()) == {"joy": 1.5, "anger": -0.5}
            assert page.locator("#o-joy").inner_text() == "1.5"
            page.locator("#max_tokens").fill("48")
            page.locator("#question").fill("How did the exam go?")
            page.locator("#send").click()
            answer = page.locator("#log .assistant .text").last
            page.wait_for_function(
                "() => { const a = document.querySelectorAll('#log .assistant .text');"
                " return a.length && a[a.length-1].textContent.length > 0; }", timeout=120_000)
            page.wait_for_function("() => !document.getElementById('send').disabled",
                                   timeout=120_000)
            assert answer.inner_text().strip(), "no streamed text"
            assert "error" not in (page.locator("#log .assistant").last.get_attribute("class"))
            assert requests and requests[-1]["stream"] is True
            assert requests[-1]["emotion"] == {"joy": 1.5, "anger": -0.5}
            meta = page.locator("#log .assistant .meta").last.inner_text()
            assert meta.startswith("emotion sent: ")
            assert json.loads(meta[len("emotion sent: "):]) == {"joy": 1.5, "anger": -0.5}
            page.locator("#controls").evaluate("e => { e.scrollTop = 0; }")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
            shutil.rmtree(profile, ignore_errors=True)
