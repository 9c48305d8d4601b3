"""One place that sizes the hostile-input fuzz suites (tests/test_fuzz_*.py).

The default test run uses the short form; ``KQ_FUZZ=campaign`` (``make fuzz``) runs the long
campaign. Each fuzz test decorates itself with ``@fuzz_settings()`` and counts the cases it tried
with :func:`count_case`, so the campaign can report cases tried per target.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings

CAMPAIGN = os.environ.get("KQ_FUZZ", "") == "campaign"
SHORT_EXAMPLES = int(os.environ.get("KQ_FUZZ_SHORT", "60"))
CAMPAIGN_EXAMPLES = int(os.environ.get("KQ_FUZZ_EXAMPLES", "2000"))

CASES: Counter[str] = Counter()
FAILURES: Counter[str] = Counter()


def fuzz_settings(short: int | None = None, campaign: int | None = None):
    """Hypothesis settings for one fuzz target: few examples by default, many in a campaign."""
    n = (campaign or CAMPAIGN_EXAMPLES) if CAMPAIGN else (short or SHORT_EXAMPLES)
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=not CAMPAIGN,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


def count_case(target: str) -> None:
    """Count one case tried against ``target`` (reported by ``make fuzz``)."""
    CASES[target] += 1


def write_report(path: str | Path) -> None:
    Path(path).write_text(json.dumps({"cases": dict(sorted(CASES.items()))}, indent=2) + "\n")
