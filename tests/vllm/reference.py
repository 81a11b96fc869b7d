"""Greedy outputs of stock vLLM (the test runs this with every plugin off), as JSON.

usage: reference.py requests.json  ->  stdout: [{"text", "token_ids", "first"}, ...]
requests.json: {"prompts": [...], "max_tokens": n, "logprobs": k, "engine": {...}}; "first"
is the first step's top-k {token id: logprob}; "engine" overrides support.ENGINE's settings
(e.g. {"enforce_eager": false}).
"""

from __future__ import annotations

import json
import sys

if __name__ == "__main__":  # vLLM spawns processes
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from support import ENGINE
    from vllm import LLM, SamplingParams

    from emosteer.vllm import model_source

    with open(sys.argv[1]) as f:
        spec = json.load(f)
    engine = LLM(model=model_source("default"), **{**ENGINE, **spec.get("engine", {})})
    params = SamplingParams(temperature=0, max_tokens=spec["max_tokens"], ignore_eos=True,
                            logprobs=spec["logprobs"])
    outs = engine.generate(spec["prompts"], params, use_tqdm=False)
    rows = [{"text": o.outputs[0].text, "token_ids": list(o.outputs[0].token_ids),
             "first": {str(t): lp.logprob for t, lp in o.outputs[0].logprobs[0].items()}}
            for o in outs]
    print("REFERENCE " + json.dumps(rows))
