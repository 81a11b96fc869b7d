"""Measure emotion steering: metrics registry, judges, experiments and their reports.

metrics.py      the registry (name, higher_is_better, what it needs): ppl, topic, eps, eas, tec
judges.py       Rating, load_judge("embedded" | "hf:<id>" | "openai:<url>#<model>")
classifier.py   the embedded judge: MiniLM features + logistic regression (weights/)
hf_judge.py     zero-shot NLI or text-classification models from Hugging Face
llm_judge.py    an LLM judge over an OpenAI-compatible chat API
scorers.py      perplexity under an unsteered LM; topic consistency from MiniLM embeddings
experiments.py  alpha sweep, mix, EV_base, prompting; cached, resumable runs
report.py       markdown tables, PNG plots, one self-contained HTML file
store.py        the append-only JSONL caches
"""
