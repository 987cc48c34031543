"""A griffe extension for the API reference: umr's docstrings cross-reference in Sphinx roles
(:class:`~umr.index.Index`), which Markdown would print verbatim; this shows each as code, named
the way Sphinx shows it (``Index`` for ``~umr.index.Index``).

mkdocs.yml loads this file as a hook too (a path relative to mkdocs.yml): its ``on_config`` puts
this folder on ``sys.path``, so that mkdocstrings then loads ``rst_roles:RstRoles`` by name from
any working directory.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")


def _shown(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class RstRoles(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_shown, obj.docstring.value)


def on_config(config, **kwargs):
    """mkdocs hook: make this module importable by name for mkdocstrings' griffe."""
    folder = str(Path(__file__).parent)
    if folder not in sys.path:
        sys.path.append(folder)
    return config
