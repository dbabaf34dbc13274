"""Read the JUnit XML that pytest wrote inside a guest into plain records."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GuestCase:
    """One guest test's outcome: ``passed``, ``failed``, ``error`` or ``skipped``."""

    classname: str
    name: str
    outcome: str
    seconds: float
    message: str = ""
    details: str = ""
    stdout: str = ""
    stderr: str = ""

    @property
    def test_id(self) -> str:
        return f"{self.classname}::{self.name}" if self.classname else self.name

    @property
    def bad(self) -> bool:
        return self.outcome in ("failed", "error")

    def report(self) -> str:
        """Failure text plus captured output, for the host's failure message."""
        parts = [f"--- {self.test_id}: {self.outcome.upper()} {self.message}".rstrip()]
        if self.details:
            parts.append(self.details.rstrip())
        if self.stdout.strip():
            parts.append("--- captured stdout\n" + self.stdout.rstrip())
        if self.stderr.strip():
            parts.append("--- captured stderr\n" + self.stderr.rstrip())
        return "\n".join(parts)


def parse_junit(path: str | Path) -> list[GuestCase]:
    """Every ``testcase`` of a pytest JUnit XML file (any number of ``testsuite`` elements)."""
    root = ET.parse(path).getroot()
    cases: list[GuestCase] = []
    for tc in root.iter("testcase"):
        outcome, message, details = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = el.get("message", "")
                details = el.text or ""
                break
        out, err = tc.find("system-out"), tc.find("system-err")
        cases.append(
            GuestCase(
                classname=tc.get("classname", ""),
                name=tc.get("name", ""),
                outcome=outcome,
                seconds=float(tc.get("time", "0") or 0),
                message=message,
                details=details,
                stdout=(out.text or "") if out is not None else "",
                stderr=(err.text or "") if err is not None else "",
            )
        )
    return cases
