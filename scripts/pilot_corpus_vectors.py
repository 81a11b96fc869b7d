"""Pilot: emotion vectors from human-written sentences instead of the model's own answers.

    python scripts/pilot_corpus_vectors.py runs/corpus/vectors/filtered_ctx_more [--limit 100]
    emosteer experiment frontier --method filtered_ctx_more --calibration-limit 4 --limit 5 \
        --seed 1 --vectors runs/corpus/vectors --out runs/corpus

Every method in `emosteer.extraction.extract` averages answers the bundled model gave when asked for
an emotion, and for anger and disgust the 135M model seldom gives them. This pilot asks
whether sentences that carry the emotion plainly do better: per extraction question, an
`emotion_corpus` sentence of the emotion (the emotional row) and a neutral one (the neutral
row) are read as the assistant's answer under the neutral prompt, and the vector is the
paper's mean difference of those readings (`recommended(filter="none")`; nothing is
generated). Only half "a" of the corpus's training part is used: judge B (`embedded-b`)
never saw those sentences, judge A trained on them, so judge B is the fair one here.

The frontier command has no method name for these vectors: they go in the folder of an
existing method (`filtered_ctx_more` above), whose name the report then shows. Results and
the verdict: docs/frontier.md, "Vectors from written sentences".
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from emosteer import data
from emosteer.extraction import extract as extraction
from emosteer.generation import chat_prompt
from emosteer.judges.embedded import training_flags
from emosteer.models import load_model
from emosteer.vllm.generate import as_batch  # no vLLM import at load


def half_a_sentences() -> dict[str, list[str]]:
    """The corpus's half-"a" training sentences by label (judge B never trained on them)."""
    rows = [json.loads(line) for line in data.dataset_path("emotion_corpus").open()]
    flags = training_flags([r["id"] for r in rows], half="a")
    out: dict[str, list[str]] = {}
    for row, keep in zip(rows, flags, strict=True):
        if keep:
            out.setdefault(row["label"], []).append(row["text"])
    return out


def written_answers(sentences: dict[str, list[str]]):
    """A stand-in for extraction's generation step: neutral rows then emotion rows of the
    chunk's questions, the answers taken in turn from the sentences instead of generated."""
    taken: dict[str, int] = {}

    def make(model, tokenizer, emotion, chunk, cfg) -> extraction.Generated:
        k = taken.get(emotion, 0)
        taken[emotion] = k + len(chunk)
        neutral, emotional = sentences["neutral"], sentences[emotion]
        texts = ([neutral[(k + i) % len(neutral)] for i in range(len(chunk))]
                 + [emotional[(k + i) % len(emotional)] for i in range(len(chunk))])
        prompts = [chat_prompt(tokenizer, *data.elicitation(cfg.dataset, q.question, None))
                   for q in chunk] * 2
        # as a finished generation: prompt ids, then answer ids ending in the end token
        outputs = [SimpleNamespace(
            prompt_token_ids=tokenizer(p, add_special_tokens=False)["input_ids"],
            outputs=[SimpleNamespace(finish_reason="stop", token_ids=tokenizer(
                t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])])
            for p, t in zip(prompts, texts, strict=True)]
        made = extraction.Generated(emotion, list(chunk), as_batch(outputs, tokenizer.pad_token_id))
        return replace(made, batch=made.batch.to(model.device))

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for <emotion>.safetensors")
    parser.add_argument("--limit", type=int, default=100, help="questions per emotion")
    args = parser.parse_args()
    extraction._generate = written_answers(half_a_sentences())  # the pilot's one change
    model, tokenizer = load_model("default")
    result = extraction.extract(model, tokenizer,
                                extraction.recommended(limit=args.limit, filter="none"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, vector in result.vectors.items():
        meta = {**vector.meta, "source": "emotion_corpus half a (pilot)"}
        type(vector)(vector.directions, meta).save(args.out / f"{name}.safetensors")
    print(f"{result.used} answers read in {result.seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
