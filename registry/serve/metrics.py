"""Counters for ``GET /metrics``, written in the Prometheus text exposition format (no client library)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["BATCH_BUCKETS", "Metrics"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Thread-safe counters: requests and tokens per ref, batch sizes, queue depth, tokens/s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()  # (ref, status)
        self.completion_tokens: Counter[str] = Counter()
        self.prompt_tokens: Counter[str] = Counter()
        self.batch_buckets: Counter[int] = Counter()
        self.batches = 0
        self.batch_rows = 0
        self.max_batch_size = 0
        self.last_batch_size = 0
        self.cancelled = 0
        self.tokens_total = 0
        self.busy_seconds = 0.0
        self.last_tokens_per_second = 0.0
        self.queue_depth = 0

    def request(self, ref: str, status: str) -> None:
        with self._lock:
            self.requests[(ref, status)] += 1

    def batch(self, size: int, tokens: int, seconds: float, per_ref: Iterable[tuple[str, int, int, str]]) -> None:
        """Record one engine run: ``size`` rows, ``tokens`` generated in ``seconds``; per row (ref, prompt, completion, finish)."""
        with self._lock:
            self.batches += 1
            self.batch_rows += size
            self.last_batch_size = size
            self.max_batch_size = max(self.max_batch_size, size)
            for b in BATCH_BUCKETS:
                if size <= b:
                    self.batch_buckets[b] += 1
            self.tokens_total += tokens
            self.busy_seconds += seconds
            self.last_tokens_per_second = tokens / seconds if seconds > 0 else 0.0
            for ref, prompt, completion, finish in per_ref:
                self.prompt_tokens[ref] += prompt
                self.completion_tokens[ref] += completion
                if finish == "cancelled":
                    self.cancelled += 1

    def render(self, served: Mapping[str, Mapping[str, Any]]) -> str:
        """The whole exposition text."""
        with self._lock:
            lines = [
                "# HELP spr_queue_depth Requests waiting for the next batch.",
                "# TYPE spr_queue_depth gauge",
                f"spr_queue_depth {self.queue_depth}",
                "# HELP spr_batch_size Rows per engine batch.",
                "# TYPE spr_batch_size histogram",
            ]
            for b in BATCH_BUCKETS:
                lines.append(f'spr_batch_size_bucket{{le="{b}"}} {self.batch_buckets[b]}')
            lines += [
                f'spr_batch_size_bucket{{le="+Inf"}} {self.batches}',
                f"spr_batch_size_sum {self.batch_rows}",
                f"spr_batch_size_count {self.batches}",
                "# HELP spr_batch_size_max Largest batch so far.",
                "# TYPE spr_batch_size_max gauge",
                f"spr_batch_size_max {self.max_batch_size}",
                "# HELP spr_generated_tokens_total Tokens generated.",
                "# TYPE spr_generated_tokens_total counter",
                f"spr_generated_tokens_total {self.tokens_total}",
                "# HELP spr_tokens_per_second Generated tokens per second of engine time (all batches; last batch).",
                "# TYPE spr_tokens_per_second gauge",
                f'spr_tokens_per_second{{window="all"}} {self.tokens_total / self.busy_seconds if self.busy_seconds else 0.0:.3f}',
                f'spr_tokens_per_second{{window="last_batch"}} {self.last_tokens_per_second:.3f}',
                "# HELP spr_rows_cancelled_total Rows dropped because their client went away.",
                "# TYPE spr_rows_cancelled_total counter",
                f"spr_rows_cancelled_total {self.cancelled}",
                "# HELP spr_requests_total Requests by served ref and outcome.",
                "# TYPE spr_requests_total counter",
            ]
            for (ref, status), n in sorted(self.requests.items()):
                lines.append(f'spr_requests_total{{model="{_label(ref)}",status="{_label(status)}"}} {n}')
            lines += ["# HELP spr_completion_tokens_total Tokens generated per served ref.",
                      "# TYPE spr_completion_tokens_total counter"]
            for ref, n in sorted(self.completion_tokens.items()):
                lines.append(f'spr_completion_tokens_total{{model="{_label(ref)}"}} {n}')
            lines += ["# HELP spr_prompt_tokens_total Prompt tokens per served ref.", "# TYPE spr_prompt_tokens_total counter"]
            for ref, n in sorted(self.prompt_tokens.items()):
                lines.append(f'spr_prompt_tokens_total{{model="{_label(ref)}"}} {n}')
        lines += ["# HELP spr_served_info The version each served ref resolves to.", "# TYPE spr_served_info gauge"]
        for ref, info in sorted(served.items()):
            lines.append(
                f'spr_served_info{{model="{_label(ref)}",version="{_label(str(info.get("version_ref")))}",'
                f'digest="{_label(str(info.get("digest")))}"}} 1'
            )
        return "\n".join(lines) + "\n"
