"""The emotion meter on tiny random models: shapes, calibration, read-only hooks, the same
readings while generating as on the text read again, files, the CLI and the server's fields."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import replace

import pytest
import torch
from conftest import byte_tokenizer, tiny_model
from live_server import EMOTIONS, live_server, random_vectors

from emosteer.emotion_meter.fit import (
    KINDS,
    corpus_rows,
    fit_meter,
    roc_auc,
    spearman,
    unseen_judgements,
)
from emosteer.emotion_meter.meter import Meter, load_meter, provenance
from emosteer.emotion_meter.read import (
    generate_metered,
    meter,
    metering,
    read_texts,
    sequence,
    token_projections,
)
from emosteer.errors import BadInputError, VectorFileError, VectorMismatchError
from emosteer.generation import GenerateConfig, chat_prompt, generate
from emosteer.steering import steer


def fitted_with(meter: Meter, vectors) -> bool:
    """True when `vectors` hold exactly the directions `meter` was fitted with."""
    fitted = meter.card.get("vectors", {})
    return all(e in vectors and e in fitted and set(meter.layers) <= set(vectors[e].layers)
               and fitted[e].get("band_sha256") ==
               provenance(vectors[e], meter.layers)["band_sha256"] for e in meter.emotions)


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("llama"), byte_tokenizer()
    vectors = random_vectors(model, scale=1.0)
    return model, tok, vectors, Meter.from_vectors(vectors, [0, 1])


@pytest.fixture(scope="module")
def fitted(setup):
    model, tok, vectors, _ = setup
    return fit_meter(model, tok, vectors, limit=4, progress=False)


def test_readings_have_one_row_per_token_in_0_1(setup):
    model, tok, _, m = setup
    r = meter(model, tok, "What a day!", m)
    assert r.values.shape == (len(tok("What a day!")["input_ids"]), len(EMOTIONS))
    assert r.emotions == EMOTIONS and "".join(r.tokens) == "What a day!"
    assert ((r.values > 0) & (r.values < 1)).all()
    assert set(r.mean()) == set(EMOTIONS)
    assert r.per_token()[0]["token"] == "W" and set(r.per_token()[0]["readings"]) == set(EMOTIONS)


def test_known_answer_projection_and_state_before_each_token(setup):
    """Each token is read at the position before it: the hand-computed projection there."""
    model, tok, vectors, m = setup
    prefix, ids = sequence(tok, "abc")
    assert prefix == [tok.eos_token_id]  # no BOS: the EOS token stands before the text
    from emosteer.hooks import hooked

    states = {}

    def keep(i):
        return lambda module, args, out: states.__setitem__(i, out)

    modules = [layer.self_attn.o_proj for layer in model.model.layers]
    with hooked(model, {mod: keep(i) for i, mod in enumerate(modules)}), torch.no_grad():
        model(torch.tensor([prefix + ids]))
    unit = {i: torch.stack([vectors[e].directions[i] / vectors[e].directions[i].norm()
                            for e in EMOTIONS]) for i in (0, 1)}
    raw = torch.stack([states[i][0] @ unit[i].T for i in (0, 1)]).mean(0)  # (pos, emotions)
    expected = torch.sigmoid(raw[:-1])  # uncalibrated: mean 0, std 1, identity weight
    torch.testing.assert_close(meter(model, tok, "abc", m).values, expected)


def test_metering_is_read_only_and_removes_its_hooks(setup):
    model, _, _, m = setup
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(ids).logits
        with metering(model, m) as steps:
            during = model(ids).logits
        with pytest.raises(RuntimeError, match="boom"), metering(model, m):
            raise RuntimeError("boom")
        after = model(ids).logits
    assert torch.equal(before, during) and torch.equal(before, after)
    assert len(steps) == 1 and steps[0].shape == (1, len(EMOTIONS))
    assert not any(mod._forward_hooks for mod in model.modules())


def test_readings_while_generating_equal_the_text_read_again(setup):
    model, tok, _, m = setup
    cfg = GenerateConfig(max_new_tokens=6, do_sample=False, repetition_penalty=1.0)
    prompts = [chat_prompt(tok, q, None) for q in ("hi", "a longer question")]
    with metering(model, m) as steps:
        batch = generate(model, tok, prompts, cfg)
    live = torch.stack(steps, dim=1)  # (batch, new, emotions)
    for k, prompt in enumerate(prompts):
        keep = batch.response_mask[k, batch.prompt_len:].bool()
        ids = batch.input_ids[k, batch.prompt_len:][keep].tolist()
        seq = (tok(prompt, add_special_tokens=False)["input_ids"], ids)
        again = m.calibrate(token_projections(model, m.site, m.band(), [seq])[0].flatten(1))
        torch.testing.assert_close(live[k, :len(ids)], again, atol=1e-4, rtol=1e-4)


def test_generate_metered_gives_the_same_text_as_generate_text(setup):
    from emosteer.generation import generate_text

    model, tok, vectors, m = setup
    cfg = GenerateConfig(max_new_tokens=5)
    joy = vectors["joy"] * 0.5
    texts = generate_text(model, tok, ["hi", "ho"], joy, 1.0, cfg=cfg)
    metered = generate_metered(model, tok, ["hi", "ho"], m, steer(model, joy, 1.0), cfg=cfg)
    assert [r.text for r in metered] == texts
    assert all(r.values.shape == (len(r.tokens), len(EMOTIONS)) for r in metered)


def test_meter_reads_before_the_steering_adds(setup):
    """Entered first, the meter reads the sites unsteered: steering only the last layer
    (the band's top) changes nothing it reads at that layer's own output."""
    model, _, vectors, _ = setup
    top = Meter.from_vectors(vectors, [1])
    joy = vectors["joy"].select([1])
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), metering(model, top) as plain:
        model(ids)
    with torch.no_grad(), metering(model, top) as first, steer(model, joy, 4.0):
        model(ids)
    with torch.no_grad(), steer(model, joy, 4.0), metering(model, top) as after:
        model(ids)
    torch.testing.assert_close(first[0], plain[0])
    assert after[0][0, 0] > plain[0][0, 0]  # registered after: it sees joy's own addition


def test_conversations_read_the_last_answer_after_its_prompt(setup):
    model, tok, _, m = setup
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo!"}]
    prefix, ids = sequence(tok, chat)
    assert tok.decode(prefix) == chat_prompt(tok, "hi", None) and tok.decode(ids) == "yo!"
    assert read_texts(model, tok, [chat], m)[0].values.shape == (3, len(EMOTIONS))
    with pytest.raises(BadInputError, match="end it with the assistant message"):
        meter(model, tok, chat[:1], m)
    assert meter(model, tok, "", m).values.shape == (0, len(EMOTIONS))


def test_fit_calibrates_on_the_training_part_only(setup, fitted):
    model, tok, _, _ = setup
    held = {r["id"] for r in corpus_rows(held_out=True)}
    train = corpus_rows(held_out=False)
    assert held and train and not held & {r["id"] for r in train}
    corpus = fitted.card["corpus"]
    assert corpus["training_ids"] == 4 * 7 and corpus["validation_ids"] > 0
    selection = fitted.card["selection"]
    chosen = selection["chosen"]
    assert chosen["kind"] in KINDS and list(fitted.layers) == chosen["layers"]
    assert set(selection["best_per_kind"]) == set(KINDS) and "Spearman" in selection["rule"]
    assert fitted.warmup == chosen["warmup"] and "spearman" in chosen
    assert fitted.link == ("softmax" if chosen["kind"] == "softmax" else "sigmoid")
    assert fitted.card["model_id"] == "tiny-llama" and set(fitted.card["vectors"]) == set(EMOTIONS)
    n = len(EMOTIONS)
    assert fitted.weight.shape == (n + (fitted.link == "softmax"), n * len(fitted.layers))
    assert fitted.bias.abs().sum() > 0  # it was fitted
    values = meter(model, tok, "I am so happy today!", fitted).values
    assert ((values > 0) & (values < 1)).all()


def test_softmax_link_readings_share_one_unit_and_survive_a_file(setup, tmp_path):
    from emosteer.emotion_meter.fit import _calibrate

    model, tok, _, m = setup
    g = torch.Generator().manual_seed(0)
    per_layer = [torch.randn(5, 2, len(EMOTIONS), generator=g) for _ in range(20)]
    labels = torch.tensor([i % (len(EMOTIONS) + 1) - 1 for i in range(20)])
    mean, std, w, b = _calibrate(per_layer, labels, [0, 1], "softmax")
    assert w.shape == (len(EMOTIONS) + 1, 2 * len(EMOTIONS)) and b.shape == (len(EMOTIONS) + 1,)
    soft = replace(m, mean=mean, std=std, weight=w, bias=b, link="softmax", warmup=2)
    values = meter(model, tok, "So glad!", soft).values
    assert (values > 0).all() and (values.sum(-1) < 1).all()  # "none" keeps the rest
    back = Meter.load(soft.save(tmp_path / "soft.json"))
    assert (back.link, back.warmup) == ("softmax", 2)
    torch.testing.assert_close(meter(model, tok, "So glad!", back).values, values)
    with pytest.raises(BadInputError, match="do not fit"):
        Meter(m.vectors, mean, std, w, b)  # softmax weights, sigmoid link
    with pytest.raises(BadInputError, match="meter link"):
        Meter(m.vectors, mean, std, w, b, link="tanh")


def test_text_level_reading_leaves_out_the_warmup_tokens():
    from emosteer.emotion_meter.meter import Readings

    values = torch.tensor([[0.9, 0.1], [0.2, 0.4], [0.4, 0.6]])
    r = Readings(("joy", "anger"), ["a", "b", "c"], values, warmup=1)
    assert r.mean() == pytest.approx({"joy": 0.3, "anger": 0.5})
    short = Readings(("joy", "anger"), ["a"], values[:1], warmup=1)  # too short: all of it
    assert short.mean() == pytest.approx({"joy": 0.9, "anger": 0.1})


def test_spearman_known_answers():
    assert spearman([1, 2, 3], [10, 30, 20]) == pytest.approx(0.5)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties: mean ranks
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # nan: constant


def test_the_fit_asks_each_sentence_of_the_judge_that_did_not_train_on_it():
    from emosteer.judges.embedded import training_flags
    from emosteer.judges.registry import load_judge

    rows = corpus_rows(held_out=False)[:12]
    got = unseen_judgements(rows)
    in_a = training_flags([r["id"] for r in rows], half="a")
    assert any(in_a) and not all(in_a)
    for row, flag, probs in zip(rows, in_a, got, strict=True):
        judge = load_judge("embedded-b" if flag else "embedded-a")
        expected = judge.rate([row["text"]], [row["text"]])[0].probs
        assert probs == pytest.approx(expected, abs=1e-5)  # batched vs alone: float rounding


def test_band_mean_kinds_become_the_same_function_of_the_layers():
    """'own' and 'all' are fitted on band means and stored over per-layer features."""
    from emosteer.emotion_meter.fit import _calibrate, _fit

    g = torch.Generator().manual_seed(0)
    per_layer = [torch.randn(4, 2, 3, generator=g) for _ in range(15)]
    labels = torch.tensor([i % 4 - 1 for i in range(15)])
    for kind, mask in (("all", torch.ones(3, 3)), ("own", torch.eye(3))):
        mean, std, w, b = _fit([p.mean(1) for p in per_layer], labels, mask)
        m2, s2, w2, b2 = _calibrate(per_layer, labels, [0, 1], kind)
        x = per_layer[0]
        torch.testing.assert_close(((x.flatten(1) - m2) / s2) @ w2.T + b2,
                                   ((x.mean(1) - mean) / std) @ w.T + b)
        if kind == "own":  # emotion k reads only its own direction, at every layer
            assert torch.equal(w2 != 0, torch.eye(3).repeat(1, 2).bool())


def test_roc_auc_known_answers():
    assert roc_auc(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([True, False, False])) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([True, False])) == 0.0
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5


def test_save_load_round_trip_and_bad_files(fitted, setup, tmp_path):
    model, _, vectors, _ = setup
    path = fitted.save(tmp_path / "meter.json")
    assert sorted(p.name for p in (tmp_path / "meter-vectors").iterdir()) == sorted(
        f"{e}.safetensors" for e in EMOTIONS)
    assert path.stat().st_size < 50_000  # the calibration is small; the vectors sit beside
    back = Meter.load(path)
    for name in ("directions", "mean", "std", "weight", "bias"):
        assert torch.equal(getattr(back, name), getattr(fitted, name)), name
    assert (back.link, back.warmup) == (fitted.link, fitted.warmup)
    plain = json.loads(setup[3].save(tmp_path / "plain.json").read_text())
    old = {k: v for k, v in plain.items() if k not in ("link", "warmup")}  # an earlier file
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert (Meter.load(tmp_path / "old.json").link, Meter.load(tmp_path / "old.json").warmup) \
        == ("sigmoid", 0)
    body = json.loads(path.read_text())
    (tmp_path / "badlink.json").write_text(json.dumps({**body, "link": "tanh"}))
    with pytest.raises(VectorFileError, match="meter link"):
        Meter.load(tmp_path / "badlink.json")
    assert back.layers == fitted.layers and back.card == json.loads(json.dumps(fitted.card))
    assert fitted_with(load_meter(model, path), vectors)
    other = {**vectors, "joy": vectors["anger"].renamed("joy")}
    assert not fitted_with(back, other)
    with pytest.raises(VectorFileError, match="not the ones it was fitted with"):
        Meter.load(path, other)
    (tmp_path / "bad.json").write_text('{"format_version": "9"}')
    with pytest.raises(VectorFileError, match="not an emosteer meter file"):
        Meter.load(tmp_path / "bad.json")
    with pytest.raises(VectorFileError, match="does not exist"):
        Meter.load(tmp_path / "missing.json")
    with pytest.raises(VectorMismatchError, match="fit one for this model"):
        load_meter(tiny_model("qwen2"), path)
    with pytest.raises(VectorFileError, match="no emotion meter is fitted"):
        load_meter(model)  # nothing is shipped for tiny-llama


# --- the server -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(setup):
    from emosteer.server import ServeConfig, create_app

    model, tok, _, m = setup
    app = create_app(model, tok, random_vectors(model), ServeConfig(max_tokens=32),
                     model_name="tiny")
    app.state.server.engine.meter = m
    with live_server(app) as url:
        yield url, app


def _post(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read().decode()
            return resp.status, raw
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _body(**extra):
    return {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
            "temperature": 0, "repetition_penalty": 1.0, **extra}


def test_api_whole_answer_has_one_reading_per_token(served):
    url, _ = served
    status, raw = _post(url, _body(meter=True, emotion={"joy": 1.0}))
    assert status == 200, raw
    body = json.loads(raw)
    entries = body["choices"][0]["emotion_meter"]
    assert len(entries) == body["usage"]["completion_tokens"] > 0
    assert all(set(e["readings"]) == set(EMOTIONS) and min(e["readings"].values()) >= 0
               and max(e["readings"].values()) <= 1 for e in entries)
    plain = json.loads(_post(url, _body(emotion={"joy": 1.0}))[1])
    assert "emotion_meter" not in plain["choices"][0]
    assert plain["choices"][0]["message"] == body["choices"][0]["message"]  # read-only


def test_api_stream_chunks_carry_the_mean_of_their_tokens(served):
    url, _ = served
    whole = json.loads(_post(url, _body(meter=True))[1])["choices"][0]["emotion_meter"]
    status, raw = _post(url, _body(meter=True, stream=True))
    assert status == 200
    chunks = [json.loads(line[6:]) for line in raw.splitlines()
              if line.startswith("data: {")]
    metered = [c for c in chunks if "emotion_meter" in c]
    assert metered and all(set(c["emotion_meter"]) == set(EMOTIONS) for c in metered)
    assert all("emotion_meter" in c for c in chunks if c["choices"][0]["delta"].get("content"))
    for e in EMOTIONS:  # a chunk's mean lies within its tokens' readings
        values = [w["readings"][e] for w in whole]
        assert all(min(values) - 1e-3 <= c["emotion_meter"][e] <= max(values) + 1e-3
                   for c in metered)
    if len(metered) == len(whole):  # a chunk per token: the same readings, in order
        assert [c["emotion_meter"] for c in metered] == [w["readings"] for w in whole]
    plain = _post(url, _body(stream=True))[1]
    assert "emotion_meter" not in plain


def test_api_meter_errors(served):
    url, app = served
    status, raw = _post(url, _body(meter="yes"))
    assert status == 400
    err = json.loads(raw)["error"]
    assert err["param"] == "meter" and err["code"] == "invalid_type"
    engine = app.state.server.engine
    saved, engine.meter = engine.meter, None
    try:
        status, raw = _post(url, _body(meter=True))
        assert status == 400 and json.loads(raw)["error"]["code"] == "meter_unavailable"
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as resp:
            entry = json.loads(resp.read())["data"][0]
            assert entry["meter"] is None and entry["meter_warmup"] is None
        assert _post(url, _body())[0] == 200  # the server keeps serving
    finally:
        engine.meter, engine._meter_error = saved, None
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as resp:
        entry = json.loads(resp.read())["data"][0]
        assert entry["meter"] == list(EMOTIONS) and entry["meter_warmup"] == saved.warmup


# --- the CLI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory, setup):
    from emosteer.models import load_model, model_shape
    from emosteer.vectors import EmotionVector

    root = tmp_path_factory.mktemp("meter-cli")
    tiny_model("llama").save_pretrained(root / "tiny")
    byte_tokenizer().save_pretrained(root / "tiny")
    model, _ = load_model(str(root / "tiny"))
    _, _, vectors, _ = setup
    mine = {e: EmotionVector(v.directions, {**v.meta, **model_shape(model)})
            for e, v in vectors.items()}
    for name, v in mine.items():
        v.save(root / "vecs" / f"{name}.safetensors")
    Meter.from_vectors(mine, [0, 1]).save(root / "meter.json")
    return root


def _run(*args):
    return subprocess.run([sys.executable, "-m", "emosteer", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_meter_and_generate_meter(cli_folder):
    model = str(cli_folder / "tiny")
    out = _run("meter", "What a day!", "--model", model, "--meter-file",
               str(cli_folder / "meter.json"))
    assert out.returncode == 0, out.stderr
    assert "What a day!" in out.stdout and all(e in out.stdout for e in EMOTIONS)
    assert any(ch in out.stdout for ch in "▁▂▃▄▅▆▇█")
    out = _run("generate", "hi", "--model", model, "--mix", "joy=1", "--vectors",
               str(cli_folder / "vecs"), "--max-new-tokens", "4", "--meter", "--meter-file",
               str(cli_folder / "meter.json"))
    assert out.returncode == 0, out.stderr
    assert "alpha 1, 1*joy" in out.stdout and "mean" in out.stdout
    out = _run("meter", "hi", "--model", model)  # nothing shipped for this model
    assert out.returncode == 2 and out.stderr.startswith("error:")
    assert "no emotion meter is fitted" in out.stderr


def test_cli_fit_meter_writes_a_meter_the_meter_command_reads(cli_folder):
    model, vecs, out = str(cli_folder / "tiny"), str(cli_folder / "vecs"), cli_folder / "m2.json"
    done = _run("fit-meter", "--vectors", vecs, "--emotion", "joy,anger", "--limit", "2",
                "--model", model, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "meter for joy, anger ->" in done.stdout and out.is_file()
    done = _run("meter", "What a day!", "--model", model, "--meter-file", str(out))
    assert done.returncode == 0 and "joy" in done.stdout and "sadness" not in done.stdout
    done = _run("fit-meter", "--vectors", vecs, "--emotion", "calm", "--model", model)
    assert done.returncode == 2 and "no vector for 'calm'" in done.stderr


def test_sparkline():
    from emosteer.cli.meter import sparkline

    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert len(sparkline([0.1] * 500)) == 60


def test_emosteer_meter_is_the_function(setup):
    import emosteer
    import emosteer.server.engine  # imports the meter's module: the name stays the function

    model, tok, _, m = setup
    assert emosteer.meter(model, tok, "hi", m).values.shape == (2, len(EMOTIONS))
    assert emosteer.load_meter(model, m) is m


@pytest.mark.slow
def test_the_shipped_meter_reads_the_bundled_model():
    from emosteer.models import load_model
    from emosteer.vectors import load_vectors

    model, tok = load_model("default")
    m = load_meter(model)  # found for the model id, its vectors checked by hash
    assert fitted_with(m, load_vectors("default")) and m.card["calibration"] == "softmax"
    assert m.link == "softmax" and m.warmup == m.card["selection"]["chosen"]["warmup"]
    assert m.card["corpus"]["training_ids"] == len(corpus_rows(held_out=False))
    texts = {"joy": "We won the final! I can't stop smiling, best day ever.",
             "fear": "I heard footsteps behind me in the dark and froze, terrified."}
    for emotion, text in texts.items():
        means = meter(model, tok, text).mean()
        assert max(means, key=means.get) == emotion, means


def test_a_meter_for_emotions_beyond_the_corpus_learns_from_the_specs(setup):
    from emosteer.emotion_meter.fit import spec_rows, training_rows
    from emosteer.emotion_specs import load_specs

    model, tok, five, _ = setup
    vectors = {"calm": five["joy"], "gratitude": five["anger"], "joy": five["sadness"],
               "base": five["joy"] * 0.5}
    rows = spec_rows()
    held = {f"spec-{n}-{i:02d}" for n, s in load_specs().items()
            for i in range(len(s.examples)) if i % 3 == 2}  # the zero-shot judge's held-out third
    assert rows and not held & {r["id"] for r in rows}
    assert {r["label"] for r in rows} == {*load_specs(), "neutral"}
    assert training_rows(None, ["joy", "anger"]) == corpus_rows(held_out=False)  # the five
    with pytest.raises(BadInputError, match="no labelled sentences for smug"):
        training_rows(None, ["calm", "smug"])
    fitted = fit_meter(model, tok, vectors, limit=3, kinds=("own",), progress=False)
    assert list(fitted.emotions) == ["joy", "calm", "gratitude"]  # every emotion, "base" left out
    assert fitted.card["corpus"]["name"] == "emotion_specs"
    assert fitted.card["corpus"]["training_ids"] == 3 * (len(load_specs()) + 1)
    assert "spearman" in fitted.card["selection"]["chosen"]


def test_spec_sentences_are_judged_by_the_zero_shot_half_that_did_not_read_them():
    from emosteer.emotion_meter.fit import spec_rows
    from emosteer.judges.registry import load_judge

    rows = [r for r in spec_rows() if r["label"] == "calm"][:4]  # indices 0, 1, 3, 4
    rows.append(next(r for r in spec_rows() if r["label"] == "neutral"))
    got = unseen_judgements(rows)
    for row, judge, probs in zip(rows, ["b", "a", "b", "a", "a"], got, strict=True):
        expected = load_judge(f"zero-shot-{judge}").rate([row["text"]], [row["text"]])[0].probs
        assert probs == pytest.approx(expected, abs=1e-5), row["id"]
