"""Append-only JSONL caches: an interrupted experiment resumes from what it has written."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path


def digest(obj: object) -> str:
    """A short stable hash of a JSON-able object (keys sorted, so dict order does not matter).

    Example:
        digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1})  # True
    """
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class JsonlStore:
    """Records keyed by `key_fields`; the last record written for a key wins.

    Each append writes whole lines, flushes and fsyncs, so a crash loses at most the batch that
    was being written; a torn last line is skipped when reading. (Append-only on purpose: an
    atomic rewrite per batch would copy the whole cache each time.)

    Args:
        path: the JSONL file (created on the first add).
        key_fields: the fields that name a record.

    Example:
        store = JsonlStore("runs/x/annotations.jsonl", ("key", "scorer"))
        store.add([{"key": "a", "scorer": "s", "value": 1}])
        store.get("a", "s")["value"]  # 1
    """

    def __init__(self, path: str | Path, key_fields: tuple[str, ...] = ("key",)):
        self.path = Path(path)
        self.key_fields = key_fields
        self.records: dict[tuple, dict] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a line cut by an interruption
                    self.records[self._key(record)] = record

    def _key(self, record: dict) -> tuple:
        return tuple(record.get(k) for k in self.key_fields)

    def get(self, *key: object) -> dict | None:
        """The last record written for the key, or None."""
        return self.records.get(tuple(key))

    def __contains__(self, key: str | tuple) -> bool:
        return (tuple(key) if isinstance(key, tuple) else (key,)) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, records: Iterable[dict]) -> None:
        """Append whole lines, flushed and fsynced."""
        records = list(records)
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
        for record in records:
            self.records[self._key(record)] = record
