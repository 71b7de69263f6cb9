"""README stays true: its settings table matches settings.py and the files it points at exist."""

import re

from serving.settings import markdown_table

from .support import ROOT

README = (ROOT / "README.md").read_text()


def test_settings_table_is_the_one_settings_py_writes():
    assert markdown_table() in README, "update README.md's settings table with `python settings.py`"


def test_files_the_readme_names_exist():
    named = set(re.findall(r"\]\(((?:docs|deploy)/[^)\s]+)\)", README))
    named |= set(re.findall(r"`((?:deploy|docs|tests|tools|serving|bench)/[\w./-]+\.\w+)`", README))
    named = {path for path in named if not path.startswith("bench/results/")}  # written by a run
    named |= {"gunicorn.conf.py", "stress_test.py", "NOTICE", "requirements.txt", "requirements-dev.txt"}
    assert named, "the README names no files"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []
