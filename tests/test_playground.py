"""The playground page in a real browser (Debian's chromium driven by Python playwright).

Compare mode (two columns streamed at once), a preset, the meter chart (fed by a faked
stream, and whatever the live server sends), the judge's verdict under each answer, the
vectors' provenance note and the phone layout. By default it serves a tiny random model (its
answers are noise) and writes the screenshots to the test's tmp folder. For the screenshots
in docs/, run it on the bundled model with the shipped vectors and meter:

    EMOSTEER_PLAYGROUND_MODEL=default \\
    EMOSTEER_PLAYGROUND_VECTORS=src/emosteer/data/vectors/smollm2-135m-instruct \\
    EMOSTEER_SCREENSHOT=docs/playground.png .venv/bin/python -m pytest tests/test_playground.py

(the phone screenshot goes next to it, as playground-phone.png). EMOSTEER_PLAYGROUND_METER
names a meter JSON to serve instead of the one shipped for the model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import byte_tokenizer, tiny_model
from live_server import live_server, random_vectors

from emosteer.emotions import JUDGE_LABELS as LABELS

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("EMOSTEER_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=(
    f"chromium is not installed at {CHROMIUM} (`apt-get install chromium`; .ci/run installs it)"))
QUESTION = "How did the exam go?"
ANSWERS_DONE = ("() => document.querySelectorAll('#cols .answer').length >= {n}"
                " && !document.getElementById('send').disabled")  # every stream has ended


def _served():
    from emosteer.server import ServeConfig, create_app

    spec = os.environ.get("EMOSTEER_PLAYGROUND_MODEL")
    folder = None
    if spec:
        from emosteer.models import load_model
        from emosteer.vectors import EmotionVector

        model, tok = load_model(spec)
        folder = Path(os.environ.get("EMOSTEER_PLAYGROUND_VECTORS", "vectors"))
        vectors = {f.stem: EmotionVector.load(f) for f in sorted(folder.glob("*.safetensors"))}
    else:
        model, tok = tiny_model("llama"), byte_tokenizer()
        vectors = random_vectors(model)
    app = create_app(model, tok, vectors, ServeConfig(max_tokens=128, batch_window=0.0),
                     vectors_from=folder)
    meter = os.environ.get("EMOSTEER_PLAYGROUND_METER")  # a meter JSON (scripts/fit_meter.py)
    if meter:
        from emosteer.emotion_meter.meter import load_meter

        app.state.engine.meter = load_meter(model, meter)
    return app


def _shot(tmp_path: Path, suffix: str = "") -> Path:
    base = Path(os.environ.get("EMOSTEER_SCREENSHOT", tmp_path / "playground.png"))
    shot = base.with_name(base.stem + suffix + base.suffix)
    shot.parent.mkdir(parents=True, exist_ok=True)
    return shot


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(base URL of a live server, a chromium context with a fresh profile)."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with live_server(_served()) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 800})
        try:
            yield url, browser
        finally:
            browser.close()
            shutil.rmtree(profile, ignore_errors=True)


def _open(site, width: int = 1280, height: int = 800, first: str = "#s-joy"):
    url, browser = site
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": height})
    requests: list[dict] = []
    page.on("request", lambda r: requests.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    page.goto(url + "/")
    page.locator(first).wait_for(timeout=30_000)  # the sliders are built
    return page, requests


def _ask(page, n_columns: int, question: str = QUESTION) -> None:
    if not page.locator("#max_tokens").is_visible():
        page.locator("#generation summary").click()
    page.locator("#max_tokens").fill("48")
    page.locator("#question").fill(question)
    page.locator("#send").click()
    done = ANSWERS_DONE.replace("{n}", str(n_columns))
    page.wait_for_function(done, timeout=600_000)  # the bundled model on a busy 2-core box


def test_compare_two_columns_preset_and_meter(site, tmp_path):
    page, requests = _open(site)
    try:
        assert page.locator("#cols .col").count() == 2  # compare mode by default
        assert json.loads(page.locator("#mix").inner_text()) == {"joy": 1.5}  # column B
        page.locator(".preset[data-preset='calm joy']").click()
        assert page.locator("#s-joy").input_value() == "1"
        assert page.locator("#s-anger").input_value() == "-0.5"
        assert page.locator(".preset.on").inner_text() == "calm joy"
        assert page.locator("#o-anger").inner_text() == "-0.5"
        assert json.loads(page.locator("#mix").inner_text()) == {"joy": 1, "anger": -0.5}
        assert "anger -0.5, joy +1" in page.locator(".col[data-col='1'] > button").inner_text()
        page.locator(".col[data-col='0'] > button").click()  # column A: sliders follow it
        assert page.locator("#which").inner_text() == "A"
        assert page.locator("#s-joy").input_value() == "0"
        page.locator(".col[data-col='1'] > button").click()
        assert page.locator("#s-joy").input_value() == "1"
        page.locator(".preset[data-preset='joyful']").click()  # the screenshot: plain joy
        assert json.loads(page.locator("#mix").inner_text()) == {"joy": 1.5}
        _ask(page, 2, QUESTION + " \N{GRADUATION CAP}")  # an emoji: the font must have it
        about = page.evaluate("async () => (await (await fetch('/v1/models')).json()).data[0]")
        metered, judged = about["meter"] is not None, about["emosteer"]["judge"] is not None
        for col in page.locator("#cols .col").all():
            assert col.locator(".answer .text").inner_text().strip(), (
                f"a column stayed empty: {col.inner_text()!r}")
            assert "error" not in col.locator(".answer").get_attribute("class")
            meter = col.locator(".meter")  # a chart if the server meters, else the note
            if metered:
                assert meter.locator("svg polyline").count() > 0
            else:
                assert "meter not available" in meter.inner_text()
            verdict = col.locator(".answer .judge")  # "judge: joy 0.81" once it has ended
            assert verdict.is_visible() is judged
            if judged:
                label, probability = verdict.inner_text().removeprefix("judge: ").split()
                assert label in LABELS and 0 < float(probability) <= 1
        sent = sorted(requests, key=lambda r: len(r["emotion"]))
        assert len(sent) == 2 and all(r["stream"] for r in sent)
        assert all(r.get("meter", False) is metered for r in sent)  # asked only if offered
        assert all(r.get("judge", False) is judged for r in sent)
        assert [r["emotion"] for r in sent] == [{}, {"joy": 1.5}]
        assert sent[0]["seed"] == sent[1]["seed"] == 1  # only the steering differs
        assert "attn site" in page.locator("#model").inner_text()
        note = page.locator("#about").inner_text()  # where the vectors came from
        source = about["emosteer"]["source"]
        assert {"shipped": f"vectors shipped with emosteer ({source['folder']})",
                "folder": f"vectors from the folder {source['folder']}",
                "library": "vectors given in Python"}[source["kind"]] in note
        page.locator("#generation summary").click()  # folded: the side bar fits the shot
        shot = _shot(tmp_path)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        page.close()


def _fake_stream(route) -> None:
    """A chat stream as a metering server sends it: readings per chunk, a verdict."""
    readings = [{"joy": 0.2, "anger": 0.1}, {"joy": 0.6, "anger": 0.1},
                {"joy": 0.9, "anger": 0.05}]
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{"choices": [{"index": 0, "delta": {"content": word}}], "emotion_meter": r}
               for word, r in zip(["It ", "went ", "great!"], readings, strict=True)]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "emotion_judge": {"label": "joy", "probability": 0.91,
                                     "probabilities": {"joy": 0.91, "anger": 0.02},
                                     "judge": "embedded:abc"}})
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)


def test_meter_chart_draws_one_line_per_emotion(site):
    page, _ = _open(site)
    try:
        page.route("**/v1/chat/completions", _fake_stream)
        page.locator("#ncols button[data-n='1']").click()
        _ask(page, 1)
        col = page.locator("#cols .col").first
        assert col.locator(".answer .text").inner_text() == "It went great!"
        lines = col.locator(".meter svg polyline")
        assert sorted(line.get_attribute("data-emotion") for line in lines.all()) == [
            "anger", "joy"]
        joy = col.locator(".meter polyline[data-emotion='joy']").get_attribute("points")
        ys = [float(p.split(",")[1]) for p in joy.split()]
        assert len(ys) == 3 and ys[0] > ys[1] > ys[2]  # rising joy = the line goes up
        assert col.locator(".legend").inner_text().startswith("joy 0.57")  # the mean
        assert col.locator(".judge").inner_text() == "judge: joy 0.91"
        assert col.locator(".judge").get_attribute("title") == "joy 0.91, anger 0.02 (embedded:abc)"
        assert "great!" in col.locator(".answer .text span[title^='joy 0.90']").inner_text()
    finally:
        page.close()


def test_phone_width_has_no_horizontal_scroll(site, tmp_path):
    page, _ = _open(site, width=390, height=844)  # a current phone; 375 checked as well
    try:
        page.locator("#ncols button[data-n='3']").click()
        assert page.locator("#cols .col").count() == 3
        assert page.locator("#which").inner_text() == "C"  # the new column is edited
        page.locator(".preset[data-preset='furious']").click()
        assert "anger +2" in page.locator(".col[data-col='2'] > button").inner_text()
        assert "joy +1.5" in page.locator(".col[data-col='1'] > button").inner_text()
        _ask(page, 3)
        for width in (375, 390):  # the shot below is taken at the last, 390
            page.set_viewport_size({"width": width, "height": 844})
            wide = page.evaluate("() => document.documentElement.scrollWidth")
            assert wide <= width, f"the page is {wide} px wide at a {width} px viewport"
            boxes = [page.locator(f".col[data-col='{i}']").bounding_box() for i in range(3)]
            assert all(b["x"] >= 0 and b["x"] + b["width"] <= width for b in boxes)
            assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]  # stacked, not side by side
        shot = _shot(tmp_path, "-phone")
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        page.close()


def test_a_custom_emotion_gets_its_own_slider(site):
    """A server holding vectors named beyond the five: the sliders are what /v1/models lists,
    and moving one sends that name in the request's mix."""
    from emosteer.server import ServeConfig, create_app

    model, tok = tiny_model("llama"), byte_tokenizer()
    five = random_vectors(model)
    app = create_app(model, tok, {"calm": five["joy"], "nostalgia": five["sadness"]},
                     ServeConfig(max_tokens=16, batch_window=0.0))
    with live_server(app) as url:  # its own server, in the module's browser
        page, requests = _open((url, site[1]), first="#s-calm")
        try:
            names = page.eval_on_selector_all("#sliders input[type=range]",
                                              "s => s.map(x => x.dataset.emotion)")
            assert names == ["calm", "nostalgia"]
            page.eval_on_selector("#s-calm", "s => { s.value = '1.5'; "
                                  "s.dispatchEvent(new Event('input')); }")
            assert page.locator("#o-calm").inner_text() == "1.5"
            assert json.loads(page.locator("#mix").inner_text()) == {"calm": 1.5}
            _ask(page, 2)
            assert sorted(r["emotion"] for r in requests if r["emotion"]) == [{"calm": 1.5}]
        finally:
            page.close()
