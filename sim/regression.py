"""Regression driver: runs the pytest suite (or a shard of it) and summarizes it per core."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from .runner import REPO_ROOT

__all__ = ["run_regression", "summarize_junit", "format_summary"]


def _area(classname, name):
    """Group a test by the core or golden module it checks (from its module name)."""
    module = classname.rsplit(".", 1)[-1]
    return module.replace("test_rtl_", "rtl:").replace("test_numerics_", "golden:").replace("test_", "")


def summarize_junit(paths):
    """Per-area counts {area: {tests, passed, failed, skipped, seconds}} from JUnit XML files."""
    summary = defaultdict(lambda: {"tests": 0, "passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0})
    for path in paths:
        for case in ET.parse(path).getroot().iter("testcase"):
            area = summary[_area(case.get("classname", ""), case.get("name", ""))]
            area["tests"] += 1
            area["seconds"] += float(case.get("time", 0))
            if case.find("failure") is not None or case.find("error") is not None:
                area["failed"] += 1
            elif case.find("skipped") is not None:
                area["skipped"] += 1
            else:
                area["passed"] += 1
    return dict(sorted(summary.items()))


def format_summary(summary):
    lines = ["| area | tests | passed | failed | skipped | seconds |", "|---|---|---|---|---|---|"]
    for area, s in summary.items():
        lines.append(f"| {area} | {s['tests']} | {s['passed']} | {s['failed']} | {s['skipped']} | "
                     f"{s['seconds']:.1f} |")
    total = {k: sum(s[k] for s in summary.values()) for k in ("tests", "passed", "failed", "skipped", "seconds")}
    lines.append(f"| **total** | {total['tests']} | {total['passed']} | {total['failed']} | {total['skipped']} | "
                 f"{total['seconds']:.1f} |")
    return "\n".join(lines)


def run_regression(marker=None, jobs=2, shard=None, junit=None, extra=()):
    """Run pytest on tests/ (``-m marker``, ``--shard K/N``); returns (exit code, JUnit path)."""
    junit = Path(junit or REPO_ROOT / "build" / "report" / f"junit{'-' + shard.replace('/', 'of') if shard else ''}.xml")
    junit.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", str(jobs), f"--junitxml={junit}", "tests"]
    if marker:
        cmd += ["-m", marker]
    if shard:
        cmd += ["--shard", shard]
    cmd += list(extra)
    code = subprocess.call(cmd, cwd=REPO_ROOT)
    return code, junit
