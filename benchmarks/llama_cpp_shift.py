"""Does an exported control vector shift llama.cpp the way it shifts emosteer?

Exports a vector with `emosteer.interop.export_gguf`, applies the file in llama.cpp
(llama-cpp-python, in its own venv: it is not a dependency of emosteer) to the bundled model's
own GGUF, and compares the change of the next-token logits with transformers + emosteer on the
same token ids:

- `emulated`: transformers with the file's directions added after decoder layer N, as we
  read llama.cpp's source (direction.N -> layer N, 0-based). Agreement here checks the layout
  and the layer numbering; `emulated_off_by_one` adds them after layer N-1 instead.
- `emosteer`: emosteer.steer with the original vector at its own site (attn by default):
  the shift a user of emosteer gets; llama.cpp adds one sublayer later (docs/method-notes.md).

Also greedy continuations in both engines, unsteered and steered. Writes
benchmarks/results/llama_cpp_shift-<machine>.json and prints it as the last line.

    .venv/bin/python benchmarks/llama_cpp_shift.py --vectors vectors --emotion joy \\
        --llama-python /work/llamavenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

import emosteer
from emosteer.generation import chat_prompt
from emosteer.interop import export_gguf
from emosteer.models import DEFAULT_GGUF, bundled_folder, decoder_layers
from emosteer.vectors import EmotionVector

QUESTIONS = ["How did the exam go?", "What do you think about the rain today?",
             "How was the train ride?"]

LLAMA_SIDE = r'''
import json, sys
import numpy as np
import gguf, llama_cpp
args = json.load(open(sys.argv[1]))
# A native build here enables the AMX/repack weight buffers; decoding with them segfaulted on
# this VM (llama-cpp-python 0.3.36). Plain CPU buffers work.
_default_params = llama_cpp.llama_model_default_params
def _plain_buffers():
    params = _default_params()
    params.use_extra_bufts = False
    return params
llama_cpp.llama_model_default_params = _plain_buffers
import llama_cpp.llama
llama_cpp.llama.llama_cpp.llama_model_default_params = _plain_buffers
llm = llama_cpp.Llama(model_path=args["model"], n_ctx=512, logits_all=True, verbose=False,
                      n_threads=args["threads"])
n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
reader = gguf.GGUFReader(args["cvec"])
buf = np.zeros(n_embd * n_layer, dtype=np.float32)  # from layer 1, as llama.cpp wants it
for t in reader.tensors:
    layer = int(t.name.split(".")[1])
    buf[(layer - 1) * n_embd:layer * n_embd] = np.asarray(t.data) * args["alpha"]
ctx = llm.ctx

def set_cvec(on):
    if on:
        ptr = buf.ctypes.data_as(llama_cpp.ctypes.POINTER(llama_cpp.ctypes.c_float))
        rc = llama_cpp.llama_set_adapter_cvec(ctx, ptr, buf.size, n_embd, 1, n_layer - 1)
    else:
        rc = llama_cpp.llama_set_adapter_cvec(ctx, None, 0, n_embd, -1, -1)
    assert rc == 0, rc

def last_logits(ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1], dtype=np.float32).tolist()

def greedy(ids, n):
    llm.reset()
    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        if tok in args["eos"] or len(out) >= n:
            break
        out.append(int(tok))
    return out

result = {"n_embd": n_embd, "n_layer": n_layer, "plain": [], "steered": []}
for on, key in ((False, "plain"), (True, "steered")):
    set_cvec(on)
    for ids in args["prompts"]:
        result[key].append({"logits": last_logits(ids), "greedy": greedy(ids, args["new_tokens"])})
set_cvec(False)
json.dump(result, open(sys.argv[2], "w"))
'''


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def hf_side(model, prompts, hooks_at, directions, alpha):
    """Last-position logits with `alpha * directions[N]` added after decoder layer hooks_at(N)."""
    layers = decoder_layers(model)

    def adder(delta):
        def hook(module, args, output):
            return (output[0] + delta, *output[1:]) if isinstance(output, tuple) \
                else output + delta
        return hook

    handles = [layers[hooks_at(n)].register_forward_hook(adder(alpha * d))
               for n, d in directions.items() if hooks_at(n) >= 0]
    try:
        return [last_hf(model, ids) for ids in prompts]
    finally:
        for h in handles:
            h.remove()


def last_hf(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().numpy()


def greedy_hf(model, tok, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             repetition_penalty=1.0, pad_token_id=tok.pad_token_id,
                             temperature=None, top_p=None, top_k=None)
    new = out[0, len(ids):].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    return [t for t in new[:next((i for i, t in enumerate(new) if t in eos), len(new))]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", default="vectors")
    ap.add_argument("--emotion", default="joy")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--llama-python", default="/work/llamavenv/bin/python",
                    help="a python with llama-cpp-python==0.3.36 and gguf installed")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    model, tok = emosteer.load_model("default")
    vector = EmotionVector.load(Path(args.vectors) / f"{args.emotion}.safetensors")
    prompts = [tok(chat_prompt(tok, q, None), add_special_tokens=False)["input_ids"]
               for q in QUESTIONS]
    eos = model.generation_config.eos_token_id
    with tempfile.TemporaryDirectory() as tmp:
        cvec = export_gguf(vector, Path(tmp) / f"{args.emotion}.gguf")
        job = {"model": str(bundled_folder() / DEFAULT_GGUF), "cvec": str(cvec),
               "alpha": args.alpha, "prompts": prompts, "new_tokens": args.new_tokens,
               "eos": eos if isinstance(eos, list) else [eos], "threads": os.cpu_count()}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        (Path(tmp) / "side.py").write_text(LLAMA_SIDE)
        subprocess.run([args.llama_python, str(Path(tmp) / "side.py"), str(Path(tmp) / "job.json"),
                        str(Path(tmp) / "out.json")], check=True)
        llama = json.loads((Path(tmp) / "out.json").read_text())
        import gguf

        reader = gguf.GGUFReader(str(cvec))
        file_dirs = {int(t.name.split(".")[1]): torch.from_numpy(np.array(t.data))
                     for t in reader.tensors}

    plain_hf = [last_hf(model, ids) for ids in prompts]
    emulated = hf_side(model, prompts, lambda n: n, file_dirs, args.alpha)
    off_by_one = hf_side(model, prompts, lambda n: n - 1, file_dirs, args.alpha)
    with emosteer.steer(model, vector, args.alpha):
        ours = [last_hf(model, ids) for ids in prompts]
        ours_greedy = [greedy_hf(model, tok, ids, args.new_tokens) for ids in prompts]
    plain_greedy = [greedy_hf(model, tok, ids, args.new_tokens) for ids in prompts]

    rows = []
    for i, q in enumerate(QUESTIONS):
        d_llama = np.array(llama["steered"][i]["logits"]) - np.array(llama["plain"][i]["logits"])
        d_emul = emulated[i] - plain_hf[i]
        d_off = off_by_one[i] - plain_hf[i]
        d_ours = ours[i] - plain_hf[i]
        rows.append({
            "question": q,
            "plain_logits_cosine_llama_vs_hf": round(cosine(
                np.array(llama["plain"][i]["logits"]), plain_hf[i]), 4),
            "shift_cosine_llama_vs_emulated": round(cosine(d_llama, d_emul), 4),
            "shift_cosine_llama_vs_emulated_off_by_one": round(cosine(d_llama, d_off), 4),
            "shift_cosine_llama_vs_emosteer": round(cosine(d_llama, d_ours), 4),
            "shift_norm_llama": round(float(np.linalg.norm(d_llama)), 2),
            "shift_norm_emosteer": round(float(np.linalg.norm(d_ours)), 2),
            "greedy": {
                "llama_cpp_plain": tok.decode(llama["plain"][i]["greedy"]),
                "llama_cpp_steered": tok.decode(llama["steered"][i]["greedy"]),
                "emosteer_plain": tok.decode(plain_greedy[i]),
                "emosteer_steered": tok.decode(ours_greedy[i]),
            }})
    report = {"benchmark": "llama_cpp_shift",
              "machine": {"host": platform.node(), "cores": os.cpu_count(),
                          "torch": torch.__version__},
              "llama_cpp_python": "0.3.36", "model_gguf": DEFAULT_GGUF,
              "vector": {"emotion": vector.emotion, "site": vector.site,
                         "layers": len(vector.layers), "n_queries": vector.meta.get("n_queries")},
              "alpha": args.alpha, "llama_n_layer": llama["n_layer"], "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{platform.node() or 'unknown'}-{os.cpu_count()}cpu"
    (out / f"llama_cpp_shift-{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
