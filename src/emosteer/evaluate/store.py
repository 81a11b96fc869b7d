"""Append-only JSONL caches: an interrupted experiment resumes from what it has written."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path


def digest(obj) -> str:
    """A short stable hash of a JSON-able object."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class JsonlStore:
    """Records keyed by `key_fields`; the last record written for a key wins.

    Each append writes whole lines, flushes and fsyncs, so a crash loses at most the batch that
    was being written; a torn last line is skipped when reading.
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

    def get(self, *key) -> dict | None:
        return self.records.get(tuple(key))

    def __contains__(self, key: str | tuple) -> bool:
        return (tuple(key) if isinstance(key, tuple) else (key,)) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, records: Iterable[dict]) -> None:
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
