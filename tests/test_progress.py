from __future__ import annotations

from autoslim import progress
from autoslim.progress import TrialProgress


def test_reports_reach_the_listener_on_each_new_stage_and_the_last_step() -> None:
    seen: list[TrialProgress] = []
    progress.listen(seen.append)
    try:
        progress.report("distill", 1, 50)
        progress.report("distill", 2, 50)  # the same stage a moment later: not forwarded
        progress.report("distill", 50, 50)  # the last step always is
        progress.report("measure")
    finally:
        progress.listen(None)
    progress.report("distill", 1, 50)  # no listener: dropped
    assert [p.describe() for p in seen] == ["distill 1/50", "distill 50/50", "measure"]
