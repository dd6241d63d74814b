"""The claims plugin: options (--scale, --recipe, ...), markers, parametrization, verdicts, report."""

from lth_checks.pytest_plugin import *  # noqa: F401,F403 - hooks and fixtures are the plugin's public names
