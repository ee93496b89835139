"""Shared helpers: where the repository's fixtures are, and the `adanoise` binary.

Tests that compare with the command need it: set ADANOISE_BIN to its path (CI
does, and sets ADANOISE_REQUIRE_BIN=1 so that they cannot skip).
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def adanoise_bin() -> str:
    path = os.environ.get("ADANOISE_BIN")
    if not path:
        default = REPO / "target" / "release" / "adanoise"
        path = str(default) if default.exists() else ""
    if not path or not Path(path).exists():
        if os.environ.get("ADANOISE_REQUIRE_BIN") == "1":
            pytest.fail("ADANOISE_REQUIRE_BIN=1 but no adanoise binary was found (set ADANOISE_BIN)")
        pytest.skip("no adanoise binary: build it (cargo build --release) or set ADANOISE_BIN")
    return path


def run_adanoise(*args: str, **kwargs) -> str:
    out = subprocess.run(
        [adanoise_bin(), *args], check=True, capture_output=True, text=True, **kwargs
    )
    return out.stdout
