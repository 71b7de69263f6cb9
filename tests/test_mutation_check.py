"""tools/mutation_check.py: each deliberate breakage of a critical behaviour makes a fast test fail."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools.mutation_check import MUTANTS, patched

from .support import ROOT


def test_every_mutant_still_finds_the_code_it_breaks():
    """A snippet that is gone (the code changed) must be updated, not skipped silently."""
    assert len({mutant.name for mutant in MUTANTS}) == len(MUTANTS)
    for mutant in MUTANTS:
        source = (ROOT / mutant.path).read_text()
        assert patched(source, mutant) != source, mutant.name
        for test in mutant.tests:
            assert (ROOT / test.split("::")[0]).is_file(), test


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_mutant_is_caught_by_a_fast_test():
    # The unbroken tests run in this same suite; each mutant's run takes 5-40 s (2 to 4 min in all).
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mutation_check.py"), "--no-baseline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
