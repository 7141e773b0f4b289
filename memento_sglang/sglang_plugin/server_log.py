"""Numbers read off SGLang's own scheduler log lines (an SGLang internal, pinned to 0.5.23).

SGLang 0.5.23 prints one decode line every `--decode-log-interval` decode steps, in
`sglang/srt/managers/scheduler_components/metrics_reporter.py` line 963,
`SchedulerMetricsReporter.report_decode_stats`:

    msg = f"Decode batch{iter_msg}, #running-req: {num_running_reqs}, {token_usage_msg}"

where `iter_msg` is `" [N]"` only with `SGLANG_LOG_FORWARD_ITERS`, and `token_usage_msg`
starts, for a plain (non-hybrid) KV pool, with `f"#token: {self.full_num_used}, ..."`
(`scheduler_components/pool_stats_observer.py` line 147,
`PoolStats.get_decode_usage_msg_parts`): the KV slots held by running requests and the
radix-tree paths they lock. For example:

    Decode batch, #running-req: 3, #token: 57, token usage: 0.01, ...

Everything that parses that text lives here, so a change of SGLang's log format is
fixed in one place.
"""

from __future__ import annotations

import re

#: (running requests, KV slots in use) of one SGLang decode log line
DECODE_LINE = re.compile(r"Decode batch(?: \[\d+\])?, #running-req: (\d+), #token: (\d+)")


def decode_steps(log_text: str) -> list[tuple[int, int]]:
    """(running requests, KV slots in use) of every decode log line in `log_text`, in order."""
    return [(int(running), int(tokens)) for running, tokens in DECODE_LINE.findall(log_text)]


def peak_used_tokens(log_text: str) -> int:
    """The peak of SGLang's own `#token` (KV slots in use) over the decode lines; 0 without any."""
    return max((tokens for _, tokens in decode_steps(log_text)), default=0)
