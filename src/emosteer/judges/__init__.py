"""The judges: what reads an answer and names its emotion (the instrument, never a target).

rating.py       Rating, LABELS, normalise, JudgeError: what every judge backend shares
registry.py     load_judge("embedded" | "embedded-a" | "hf:<id>" | "openai:<url>#<model>")
embedded.py     the embedded judges: MiniLM features + logistic regression (weights/)
hf.py           zero-shot NLI or text-classification models from Hugging Face
zero_shot.py    any set of emotion specs: prototype similarity on the same MiniLM encoder
llm.py          an LLM judge over an OpenAI-compatible chat API (the openai client)
"""
