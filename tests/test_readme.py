"""README stays true: its settings table matches settings.py and the files it points at exist."""

import re

from settings import OPTIONS

from .support import ROOT

README = (ROOT / "README.md").read_text()


def test_settings_table_lists_every_option_with_its_default():
    rows = {}
    for line in README.splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("--") and cells[1].isupper():
            rows[cells[0]] = cells[1:3]
    for option in OPTIONS:
        default = "(unset)" if option.default is None else str(option.default)
        assert rows.get(option.flag) == [option.env_var, default], f"README row for {option.flag}"
    assert set(rows) == {option.flag for option in OPTIONS}


def test_files_the_readme_names_exist():
    named = set(re.findall(r"\]\(((?:docs|deploy)/[^)\s]+)\)", README))
    named |= set(re.findall(r"`((?:deploy|docs|tests|tools|serving|bench)/[\w./-]+\.\w+)`", README))
    named = {path for path in named if not path.startswith("bench/results/")}  # written by a run
    named |= {"gunicorn.conf.py", "stress_test.py", "NOTICE", "requirements.txt", "requirements-dev.txt"}
    assert named, "the README names no files"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []
