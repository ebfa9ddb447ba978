"""config/prometheus/alerts.yml: valid for promtool, every alert unit-tested firing and not
firing (alerts_test.yml), and each one ready for the operator it wakes (for, severity, summary,
description, a runbook section that exists)."""

from __future__ import annotations

import re

from tests.conftest import ROOT
from tests.promtool import promtool

RULES = ROOT / "config/prometheus/alerts.yml"
RULE_TESTS = ROOT / "config/prometheus/alerts_test.yml"
OPERATIONS = ROOT / "docs/operations.md"


def alerts() -> dict[str, str]:
    """Each alert's name and the text of its rule."""
    blocks = re.split(r"\n\s+- alert: ", RULES.read_text())[1:]
    return {block.split("\n", 1)[0].strip(): block for block in blocks}


def test_promtool_accepts_the_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert f"SUCCESS: {len(alerts()) + 1} rules found" in out.stdout.decode()  # + the recording rule


def test_the_rule_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert "SUCCESS" in out.stdout.decode()


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    checks = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", RULE_TESTS.read_text())
    firing = {name for name, empty in checks if not empty}
    quiet = {name for name, empty in checks if empty}
    assert set(alerts()) == firing == quiet


def test_every_alert_tells_the_operator_what_to_do() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    assert len(alerts()) >= 10
    for name, rule in alerts().items():
        assert re.search(r"\n\s+for: \d+[sm]\n", rule), name
        assert re.search(r"\n\s+severity: (critical|warning)\n", rule), name
        assert re.search(r"\n\s+summary: \S", rule) and re.search(r"\n\s+description: \S", rule), name
        anchor = re.search(r"\n\s+runbook: docs/operations\.md#(\S+)", rule)
        assert anchor and anchor.group(1) == name.lower(), name
        assert anchor.group(1) in headings, f"{name}: no section {anchor.group(1)!r} in docs/operations.md"
