"""Measure emotion steering: metrics registry, experiments and their reports (the judges that
read the answers are in `emosteer.judges`).

metrics.py      the registry (name, higher_is_better, what it needs): ppl, topic, eps, eas, tec
scorers.py      perplexity under an unsteered LM; topic consistency from MiniLM embeddings
conditions.py   evaluation questions and conditions (vector and alpha, or a system prompt)
runner.py       EvalConfig and the cached, resumable Runner
experiments.py  alpha sweep, mix, EV_base, prompting, each with its report
compare.py      prompting vs steering vs circuit modulation on held-out SEV scenes
report.py       metric tables and the one writer of report.md / report.html
figures.py      the experiments' PNG plots
store.py        the append-only JSONL caches
"""
