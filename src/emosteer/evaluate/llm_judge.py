"""An LLM judge over any OpenAI-compatible chat-completions endpoint (spec `openai:URL#MODEL`).

One request per answer rates the six emotions 0-100 (EAS) and whether the answer stays on the
question (topic). The rubric is ours. Replies are parsed leniently (code fences, prose around
the JSON, `joy: 70` lines); a reply that still can't be read is asked again, then reported.
The API key, if the server needs one, comes from $EMOSTEER_JUDGE_API_KEY or $OPENAI_API_KEY.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from emosteer.errors import BadInputError
from emosteer.evaluate.judges import EMOTIONS, JudgeError, Rating, normalise

RUBRIC = """You rate the emotional tone of an assistant's answer to a user's question.

For each emotion give a score from 0 to 100 for how strongly the ANSWER itself expresses it:
0 = not at all, 30 = a hint, 60 = clearly present, 100 = overwhelming. Judge the tone and the
feelings the writer conveys, not the topic: an answer that calmly explains what fear is scores
0 for fear. Polite helpfulness ("Happy to help!") alone is not joy.

Also give "on_topic" from 0 to 100: how well the answer addresses the question it was given
(0 = about something else, 100 = fully on the question), whatever its tone.

Reply with one JSON object and nothing else, for example:
{"joy": 0, "anger": 0, "sadness": 0, "fear": 0, "disgust": 0, "surprise": 0, "on_topic": 0}"""

RUBRIC_VERSION = "1"
_KEYS = (*EMOTIONS, "on_topic")
_PAIR = re.compile(r'["\']?(joy|anger|sadness|fear|disgust|surprise|on_topic)["\']?\s*[:=]\s*'
                   r'["\']?(-?\d+(?:\.\d+)?)\s*%?', re.IGNORECASE)


class OpenAIJudge:
    eas_is_proxy = False
    rates_topic = True

    def __init__(self, base_url: str, model: str, timeout: float = 30.0, retries: int = 3,
                 workers: int = 4, backoff: float = 0.5):
        if not re.match(r"^https?://[^/\s]+", base_url):
            raise BadInputError(f"judge URL {base_url!r} must start with http:// or https:// "
                                "(e.g. openai:http://localhost:8000/v1#my-model)")
        if not model:
            raise BadInputError("the judge spec names no model: write openai:<base url>#<model>")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout, self.retries, self.workers, self.backoff = timeout, retries, workers, backoff
        self.spec = f"openai:{self.base_url}#{model}"
        self.version = f"rubric{RUBRIC_VERSION}"

    @classmethod
    def from_spec(cls, spec: str, **options) -> OpenAIJudge:
        url, _, model = spec.removeprefix("openai:").partition("#")
        return cls(url, model, **options)

    def rate(self, questions: Sequence[str], answers: Sequence[str]) -> list[Rating]:
        pairs = list(zip(questions, answers, strict=True))
        if self.workers <= 1 or len(pairs) <= 1:
            return [self.rate_one(q, a) for q, a in pairs]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda qa: self.rate_one(*qa), pairs))

    def rate_one(self, question: str, answer: str) -> Rating:
        content = f"QUESTION:\n{question}\n\nANSWER:\n{answer or '(empty)'}"
        last = ""
        for attempt in range(self.retries + 1):
            reply = self._chat(content, attempt)
            values = parse_reply(reply)
            if values is not None:
                scores = {e: values[e] for e in EMOTIONS}
                probs = normalise({**scores, "neutral": 100.0 - max(scores.values())})
                return Rating(probs, scores, values["on_topic"] / 100.0,
                              extra={"reply": reply[:500]})
            last = reply
            self._sleep(attempt)
        raise JudgeError(f"judge {self.spec} replied without the JSON scores asked for "
                         f"{self.retries + 1} times; last reply: {last[:200]!r}")

    def _chat(self, content: str, attempt: int) -> str:
        """One completion, with retries for timeouts, refused connections and 429/5xx."""
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 200,
                           "messages": [{"role": "system", "content": RUBRIC},
                                        {"role": "user", "content": content}]}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get("EMOSTEER_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{self.base_url}/chat/completions"
        problem = ""
        for retry in range(self.retries + 1):
            request = urllib.request.Request(url, body, headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read().decode("utf-8", "replace")
                return _message(payload)
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500:
                    raise JudgeError(f"judge {self.spec} answered HTTP {err.code} "
                                     f"({err.reason}) at {url}: check the URL, the model name "
                                     "and the API key ($EMOSTEER_JUDGE_API_KEY)") from None
                problem = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                problem = f"unreachable ({reason})"
            self._sleep(retry)
        raise JudgeError(f"judge endpoint {url} is {problem} after {self.retries + 1} tries: "
                         "check that the server runs and the URL is right")

    def _sleep(self, attempt: int) -> None:
        if self.backoff > 0:
            time.sleep(self.backoff * 2**attempt)


def _message(payload: str) -> str:
    """The assistant text of a chat-completions reply ('' when the shape is unexpected)."""
    try:
        data = json.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return payload  # not the API's shape: let the parser try the raw text
    return content if isinstance(content, str) else ""


def parse_reply(text: str) -> dict[str, float] | None:
    """The seven numbers from a judge's reply, clamped to 0-100; None when any is missing.

    Accepts a JSON object (possibly inside a code fence or prose, keys in any case, numbers as
    strings, "70%") or `key: value` pairs.
    """
    values: dict[str, float] = {}
    for block in re.findall(r"\{.*?\}", text, re.DOTALL) + ([text] if "{" not in text else []):
        try:
            obj = json.loads(block)
        except ValueError:
            continue
        if isinstance(obj, dict):
            obj = {str(k).strip().lower(): v for k, v in obj.items()}
            for key in _KEYS:
                number = _number(obj.get(key))
                if number is not None:
                    values[key] = number
            if all(key in values for key in _KEYS):
                break
    if not all(key in values for key in _KEYS):
        for key, number in _PAIR.findall(text):
            values.setdefault(key.lower(), float(number))
    if not all(key in values for key in _KEYS):
        return None
    return {key: min(100.0, max(0.0, values[key])) for key in _KEYS}


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*%?\s*", value)
        return float(match.group(1)) if match else None
    return None
