"""PromQL evaluated by Prometheus's own engine, offline: ``promtool test rules`` with a ``promql_expr_test``.

Tests of generated or shipped queries state the series and the answer they expect; promtool compares, so what
is checked is what Prometheus computes, not the text of the query.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def evaluate(tmp_path: Path, expr: str, series: list[dict[str, str]], expected: list[dict]) -> tuple[int, str]:
    """promtool's verdict on ``expr`` evaluating to ``expected`` at 10 minutes, given ``series``: (exit, output).

    ``series`` are promtool input series (``{"series": 'name{label="v"}', "values": "0+600x20"}``, one sample a
    minute); ``expected`` its ``exp_samples`` (``[]``: no series at all, "no data").
    """
    (tmp_path / "empty-rules.yml").write_text("groups: []\n")
    test = {
        "rule_files": ["empty-rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [{"expr": expr, "eval_time": "10m", "exp_samples": expected}],
            }
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr
