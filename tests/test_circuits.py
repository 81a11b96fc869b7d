"""Emotion circuits: known answers on tiny random models."""

from __future__ import annotations

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer.circuits import analysis as A
from emosteer.circuits.circuit import Components, EmotionCircuit, modulate
from emosteer.circuits.components import Edit, contributions, editing, parts
from emosteer.errors import BadInputError, UnknownEmotionError, VectorFileError, VectorMismatchError
from emosteer.models import model_shape


def bias_term(module: torch.nn.Module, direction: torch.Tensor) -> float:
    """d . b: what contributions() leaves out of d . module(inputs)."""
    bias = getattr(module, "bias", None)
    return 0.0 if bias is None else float(bias.detach().float() @ direction.to(bias.device).float())

DENSE = ["llama", "qwen3", "gemma2", "phi3", "phi", "gpt2", "gpt_neox", "falcon", "opt"]


def _inputs(seed: int = 1, batch: int = 2, pos: int = 7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 250, (batch, pos), generator=g)


def _capture(module):
    seen = {}

    def hook(mod, args, output):
        seen["in"], seen["out"] = args[0].detach().clone(), output.detach().clone()
    return module.register_forward_hook(hook), seen


@pytest.mark.parametrize("model_type", DENSE)
def test_contributions_sum_to_the_projection(model_type):
    model = tiny_model(model_type)
    p = parts(model)
    direction = torch.nn.functional.normalize(torch.randn(model.config.hidden_size), dim=0)
    for kind, group in (("neuron", 1), ("head", p.head_dim)):
        module = p.modules(kind)[1]
        handle, seen = _capture(module)
        with torch.no_grad():
            model(_inputs())
        handle.remove()
        terms = contributions(module, seen["in"], direction, group)
        assert terms.shape[-1] == p.size(kind)
        expected = seen["out"].float() @ direction
        torch.testing.assert_close(terms.sum(-1) + bias_term(module, direction), expected,
                                   rtol=1e-4, atol=1e-5)


def test_moe_neurons_are_refused_clearly():
    with pytest.raises(BadInputError, match="mixture of experts"):
        parts(tiny_model("mixtral"))


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_edits_change_inside_and_restore_after_even_on_error(model_type):
    model = tiny_model(model_type)
    p = parts(model)
    ids = _inputs()
    with torch.no_grad():
        before = model(ids).logits
    keep = torch.ones(1, p.n_heads * p.head_dim)
    keep[0, :p.head_dim] = 0.0  # ablate head 0
    edits = {("head", 0): Edit(keep, torch.zeros_like(keep)),
             ("neuron", 1): Edit(torch.ones(1, p.n_neurons), torch.full((1, p.n_neurons), 0.5))}
    with pytest.raises(RuntimeError, match="boom"), editing(p, edits), torch.no_grad():
        inside = model(ids).logits
        assert not torch.equal(inside, before)
        raise RuntimeError("boom")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_last_only_edit_leaves_earlier_positions_alone():
    model = tiny_model("llama")
    p = parts(model)
    ids = _inputs()
    add = torch.randn(1, p.n_neurons)
    with torch.no_grad():
        before = model(ids).logits
        with editing(p, {("neuron", 0): Edit(torch.ones_like(add), add)}, last_only=True):
            after = model(ids).logits
    assert torch.equal(after[:, :-1], before[:, :-1])
    assert not torch.equal(after[:, -1], before[:, -1])


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gpt2"])
def test_last_token_runner_matches_a_full_forward_pass(model_type):
    model, tok = tiny_model(model_type), byte_tokenizer()
    p = parts(model)
    prompts = ["a short one", "a somewhat longer prompt here", "mid length"]
    dirs = torch.nn.functional.normalize(torch.randn(2, p.n_layers, 64), dim=-1)
    readout = A.Readout(0, dirs[:, 0], torch.zeros(2), torch.ones(2))
    runner = A.LastToken(model, tok, prompts, p, readout, chunk=2)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    from emosteer.generation import forward_kwargs

    with torch.no_grad():
        out = model(**forward_kwargs(model, enc["input_ids"], enc["attention_mask"]),
                    output_hidden_states=True)
    torch.testing.assert_close(runner.finals(), out.hidden_states[1][:, -1], rtol=1e-4,
                               atol=1e-5)
    # an edit on the last token changes the readout; the cached prefix is not consumed
    add = torch.randn(1, p.n_neurons)
    edited = runner.finals({("neuron", 0): Edit(torch.ones_like(add), add)})
    assert not torch.allclose(edited, runner.finals())
    torch.testing.assert_close(runner.finals(), out.hidden_states[1][:, -1], rtol=1e-4,
                               atol=1e-5)
    assert runner.croppable  # the shared prefix is cut back, not copied, after each step
    runner.croppable = False  # the copying fallback gives the same answers
    torch.testing.assert_close(runner.finals({("neuron", 0): Edit(torch.ones_like(add), add)}),
                               edited)


def test_directions_are_unit_and_centred():
    states = torch.randn(12, 3, 8)
    labels = ["joy", "anger", "fear"] * 4
    dirs = A.directions(states, labels, ["joy", "anger", "fear"])
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(3, 3))
    means = A.emotion_means(states, labels, ["joy", "anger", "fear"])
    centred = means - means.mean(0)
    torch.testing.assert_close(dirs * centred.norm(dim=-1, keepdim=True), centred)


def test_random_controls_match_layers_and_avoid_the_picked():
    import random

    picked = [(0, 1), (0, 2), (3, 5)]
    control = A.random_like(picked, 10, random.Random(0))
    assert sorted(layer for layer, _ in control) == [0, 0, 3]
    assert not set(control) & set(picked)


def _circuit(model, emotions=("joy", "fear")):
    p = parts(model)
    g = torch.Generator().manual_seed(0)
    meta = {**model_shape(model), "n_heads": p.n_heads, "head_dim": p.head_dim,
            "n_neurons": p.n_neurons}
    circuits = {e: {"head": Components(torch.tensor([0, 1]), torch.tensor([2, 0]),
                                       torch.rand(2, generator=g),
                                       torch.randn(2, p.head_dim, generator=g)),
                    "neuron": Components(torch.tensor([1]), torch.tensor([7]),
                                         torch.rand(1, generator=g),
                                         torch.randn(1, 1, generator=g))}
                for e in emotions}
    return EmotionCircuit(circuits, meta)


def test_circuit_file_round_trips_bit_exactly(tmp_path):
    model = tiny_model("llama")
    circuit = _circuit(model)
    loaded = EmotionCircuit.load(circuit.save(tmp_path / "c.safetensors"))
    assert loaded.equal(EmotionCircuit(circuit.circuits, loaded.meta))
    assert all(torch.equal(v, loaded.tensors()[k]) for k, v in circuit.tensors().items())
    assert loaded.size("joy") == {"head": 2, "neuron": 1}


def test_circuit_files_are_checked(tmp_path):
    model = tiny_model("llama")
    path = _circuit(model).save(tmp_path / "c.safetensors")
    other = tiny_model("llama", intermediate_size=96)
    with pytest.raises(VectorMismatchError, match="n_neurons 128 vs 96"), \
            modulate(other, EmotionCircuit.load(path), "joy"):
        pass
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file at all")
    with pytest.raises(VectorFileError, match="not a readable"):
        EmotionCircuit.load(bad)
    with pytest.raises(UnknownEmotionError, match="choose from joy, fear"), \
            modulate(model, EmotionCircuit.load(path), "envy"):
        pass


def test_modulation_steers_and_restores():
    model = tiny_model("llama")
    circuit = _circuit(model)
    ids = _inputs()
    with torch.no_grad():
        before = model(ids).logits
        with modulate(model, circuit, "joy", 0.0):
            assert torch.equal(model(ids).logits, before)
        with modulate(model, circuit, "joy", 2.0):
            assert not torch.allclose(model(ids).logits, before)
        assert torch.equal(model(ids).logits, before)
    with pytest.raises(Exception, match="finite"), modulate(model, circuit, "joy",
                                                            float("nan")):
        pass


class _CyclingJudge:
    """Labels answers in turn; discovery asks each scene for 6 emotions then neutral."""

    spec, version = "cycling", "test"

    def __init__(self, labels):
        self.labels = labels

    def rate(self, questions, answers):
        from emosteer.judges.registry import LABELS, Rating

        out = []
        for i, _ in enumerate(answers):
            label = self.labels[i % len(self.labels)]
            out.append(Rating({x: float(x == label) for x in LABELS}, {}))
        return out


def test_discover_end_to_end_on_a_tiny_model(tmp_path):
    from emosteer.circuits.discover import DiscoverConfig, discover
    from emosteer.circuits.report import save
    from emosteer.generation import GenerateConfig

    model, tok = tiny_model("llama"), byte_tokenizer()
    emotions = ("anger", "sadness", "joy", "fear", "surprise", "disgust")
    cfg = DiscoverConfig(emotions=emotions, skeletons=3, test_skeletons=2, budget=10, ks=(1, 3),
                         min_kept=2, generation=GenerateConfig(max_new_tokens=3, batch_size=8))
    # every emotional answer confirmed but joy's (judged neutral): joy falls back to all prompts
    judge = _CyclingJudge(["anger", "sadness", "neutral", "fear", "surprise", "disgust",
                           "neutral"])
    result = discover(model, tok, cfg, judge=judge, progress=False)
    s = result.summary
    assert s["confirmed"] == {**dict.fromkeys(emotions, 9), "joy": 0}
    assert s["unfiltered"] == ["joy"]
    assert result.directions.shape == (6, 2, 64)
    assert result.scores["neuron"].shape == (6, 2, 128)
    assert result.scores["head"].shape == (6, 2, 4)
    assert all(sum(result.circuit.size(e).values()) <= 10 for e in emotions)
    curves = s["causal"]["curves"]
    assert {(c["mode"], c["kind"], c["k"], c["pick"]) for c in curves} == {
        (m, k, n, p) for m in ("ablate", "enhance") for k in ("neuron", "head")
        for n in (1, 3) for p in ("top", "random")}
    paths = save(result, tmp_path, list(emotions))
    loaded = EmotionCircuit.load(paths["circuit"])
    assert loaded.emotions == list(emotions)
    assert all((tmp_path / f"{name}.png").stat().st_size > 1000
               for name in ("pca", "consistency", "causal", "sublayers"))
    assert "## Causal checks" in (tmp_path / "report.md").read_text()
    with modulate(model, loaded, "fear", 1.0):
        pass


def test_compare_runs_every_method_on_test_scenes(tmp_path):
    from emosteer.circuits.discover import DiscoverConfig, discover
    from emosteer.evaluate.compare import CompareConfig, compare, markdown
    from emosteer.generation import GenerateConfig

    model, tok = tiny_model("llama"), byte_tokenizer()
    gen = GenerateConfig(max_new_tokens=2, batch_size=16)
    emotions = ("anger", "joy")
    judge = _CyclingJudge(["anger", "joy", "neutral"])
    found = discover(model, tok, DiscoverConfig(emotions=emotions, skeletons=2,
                                                test_skeletons=1, budget=4, ks=(1,),
                                                generation=gen), judge=judge, progress=False)
    result = compare(model, tok, found.circuit, found.vectors,
                     CompareConfig(emotions=emotions, test_skeletons=1,
                                   calibration_skeletons=1, alphas=(1.0,), strengths=(2.0,),
                                   generation=gen), judge=judge, progress=False)
    methods = [r["method"] for r in result["table"]]
    assert methods == ["unsteered", "prompting", "steering", "circuit"]
    assert result["calibration"]["chosen"] == {"steering": {"anger": 1.0, "joy": 1.0},
                                               "circuit": {"anger": 2.0, "joy": 2.0}}
    test_ids = {r["scene"] for r in result["rows"]}
    from emosteer import data

    assert test_ids <= {s.id for s in data.load_sev("test")}  # never discovery scenes
    assert len(result["rows"]) == 3 * (1 + 3 * len(emotions))
    assert "| circuit | " in markdown(result) and "(x2)" in markdown(result)
