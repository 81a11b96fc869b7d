"""An LLM judge over any OpenAI-compatible chat-completions endpoint (spec `openai:URL#MODEL`).

One request per answer rates the six emotions 0-100 (EAS) and whether the answer stays on the
question (topic). The rubric is ours. Requests go through the official `openai` client (the
`eval` extra). Replies are parsed leniently (code fences, prose around the JSON, `joy: 70`
lines).

One retry policy: an answer costs at most `retries + 1` requests. A timeout, a refused
connection, HTTP 429 or 5xx, or a reply without the scores uses one attempt and is tried again
after `backoff * 2**attempt` seconds; any other HTTP error fails at once. The client's own
retries are off, so they do not multiply with ours. The API key, if the server needs one,
comes from $EMOSTEER_JUDGE_API_KEY or $OPENAI_API_KEY.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from emosteer.errors import BadInputError, EmosteerError
from emosteer.judges.rating import SCORED, JudgeError, Rating, normalise

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
_KEYS = (*SCORED, "on_topic")
_PAIR = re.compile(rf'["\']?({"|".join(_KEYS)})["\']?\s*[:=]\s*'
                   r'["\']?(-?\d+(?:\.\d+)?)\s*%?', re.IGNORECASE)
_NO_KEY = "EMPTY"  # what local OpenAI-compatible servers expect when they check no key


class _Retry(Exception):
    """One failed attempt that may be tried again; str() says what went wrong."""

    def __init__(self, problem: str, transport: bool):
        super().__init__(problem)
        self.transport = transport  # True: the request failed; False: the reply had no scores


class OpenAIJudge:
    """Rates answers with an LLM behind an OpenAI-compatible API (spec `openai:URL#MODEL`).

    Args:
        base_url: the API root, e.g. http://localhost:8000/v1.
        model: the model name the server knows.
        timeout: seconds per request.
        retries: further attempts per answer after the first (requests <= retries + 1).
        workers: answers rated in parallel.
        backoff: seconds before the first retry, doubled each time (0: no wait).

    Example:
        judge = OpenAIJudge("http://localhost:8000/v1", "gpt-4o-mini")
        judge.rate(["How was the exam?"], ["Brutal. They lied to us."])[0].scores["anger"]
    """

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
        self.client = _client(self.base_url, timeout)

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> OpenAIJudge:
        """The judge of a spec `openai:<base url>#<model>`.

        Example:
            OpenAIJudge.from_spec("openai:http://localhost:8000/v1#my-model", retries=1)
        """
        url, _, model = spec.removeprefix("openai:").partition("#")
        return cls(url, model, **options)

    def rate(self, questions: Sequence[str], answers: Sequence[str]) -> list[Rating]:
        """One Rating per answer, `workers` requests at a time."""
        pairs = list(zip(questions, answers, strict=True))
        if self.workers <= 1 or len(pairs) <= 1:
            return [self.rate_one(q, a) for q, a in pairs]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda qa: self.rate_one(*qa), pairs))

    def rate_one(self, question: str, answer: str) -> Rating:
        """Rate one answer: at most retries + 1 requests, then a JudgeError."""
        content = f"QUESTION:\n{question}\n\nANSWER:\n{answer or '(empty)'}"
        failure = _Retry("", transport=True)
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(attempt - 1)
            try:
                reply = self._chat(content)
                values = parse_reply(reply)
                if values is None:
                    raise _Retry(reply, transport=False)
            except _Retry as err:
                failure = err
                continue
            scores = {e: values[e] for e in SCORED}
            probs = normalise({**scores, "neutral": 100.0 - max(scores.values())})
            return Rating(probs, scores, values["on_topic"] / 100.0, extra={"reply": reply[:500]})
        tries = self.retries + 1
        if failure.transport:
            raise JudgeError(f"judge endpoint {self.base_url}/chat/completions is {failure} "
                             f"after {tries} tries: check that the server runs and the URL is "
                             "right")
        raise JudgeError(f"judge {self.spec} replied without the JSON scores asked for "
                         f"{tries} times; last reply: {str(failure)[:200]!r}")

    def _chat(self, content: str) -> str:
        """One request; the assistant's text, or the raw body when it has another shape."""
        import openai

        try:
            response = self.client.chat.completions.with_raw_response.create(
                model=self.model, temperature=0, max_tokens=200,
                messages=[{"role": "system", "content": RUBRIC},
                          {"role": "user", "content": content}])
        except openai.APIStatusError as err:
            code = err.status_code
            if code != 429 and code < 500:
                raise JudgeError(f"judge {self.spec} answered HTTP {code} "
                                 f"({err.response.reason_phrase}) at {self.base_url}: check the "
                                 "URL, the model name and the API key "
                                 "($EMOSTEER_JUDGE_API_KEY)") from None
            raise _Retry(f"HTTP {code}", transport=True) from None
        except openai.APITimeoutError:
            raise _Retry("unreachable (timed out)", transport=True) from None
        except openai.APIConnectionError as err:
            raise _Retry(f"unreachable ({err.__cause__ or err})", transport=True) from None
        return _message(response.text)

    def _sleep(self, attempt: int) -> None:
        if self.backoff > 0:
            time.sleep(self.backoff * 2**attempt)


def _client(base_url: str, timeout: float) -> Any:
    """An openai.OpenAI client with its own retries off (OpenAIJudge has one retry policy)."""
    try:
        import openai
    except ImportError as err:
        raise EmosteerError("the openai: judge needs the openai client: pip install "
                            "'emosteer[eval]' (or pip install openai)") from err
    key = os.environ.get("EMOSTEER_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return openai.OpenAI(base_url=base_url, api_key=key or _NO_KEY, timeout=timeout,
                         max_retries=0)


def _message(payload: str) -> str:
    """The assistant text of a chat-completions reply ('' when the content is not text)."""
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

    Args:
        text: the assistant's reply.

    Example:
        parse_reply('{"joy": 10, "anger": 80, "sadness": 5, "fear": 0, "disgust": 20, '
                    '"surprise": 0, "on_topic": 90}')["anger"]  # 80.0
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


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*%?\s*", value)
        return float(match.group(1)) if match else None
    return None
