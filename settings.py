"""Every setting of the service: the door to serving/settings.py, which defines them all.

python settings.py        # prints the README's table of settings
"""

from serving.settings import (
    ANSWER_GRACE_SECONDS,
    OPTIONS,
    PRECISIONS,
    RESIZE_MODES,
    RUNTIMES,
    Option,
    Settings,
    SettingsError,
    build_parser,
    load_settings,
    markdown_table,
)

__all__ = [
    "ANSWER_GRACE_SECONDS",
    "OPTIONS",
    "PRECISIONS",
    "RESIZE_MODES",
    "RUNTIMES",
    "Option",
    "Settings",
    "SettingsError",
    "build_parser",
    "load_settings",
    "markdown_table",
]

if __name__ == "__main__":
    print(markdown_table())
