"""Measure emotion steering: metrics registry, judges, experiments and their reports.

metrics.py      the registry (name, higher_is_better, what it needs): ppl, topic, eps, eas, tec
rating.py       Rating, LABELS, normalise, JudgeError: what every judge backend shares
judges.py       the judge registry: load_judge("embedded" | "hf:<id>" | "openai:<url>#<model>")
classifier.py   the embedded judge: MiniLM features + logistic regression (weights/)
hf_judge.py     zero-shot NLI or text-classification models from Hugging Face
llm_judge.py    an LLM judge over an OpenAI-compatible chat API (the openai client)
scorers.py      perplexity under an unsteered LM; topic consistency from MiniLM embeddings
conditions.py   evaluation questions and conditions (vector and alpha, or a system prompt)
runner.py       EvalConfig and the cached, resumable Runner
experiments.py  alpha sweep, mix, EV_base, prompting, each with its report
compare.py      prompting vs steering vs circuit modulation on held-out SEV scenes
report.py       metric tables and the one writer of report.md / report.html
figures.py      the experiments' PNG plots
store.py        the append-only JSONL caches
"""
