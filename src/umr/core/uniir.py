"""UniIR's text conventions, in one place for the M-BEIR reader and CLIP-SF.

UniIR (``src/data/mbeir_dataset.py``) passes every query, candidate and instruction text
through ``format_string`` before tokenising; M-BEIR scores are only comparable with the same
clean-up. No heavy imports: the M-BEIR reader uses it without loading a model.
"""

from __future__ import annotations


def format_string(text: str | None) -> str:
    """UniIR's ``format_string``: strip ``\\r``, whitespace and surrounding double quotes,
    capitalise the first character, end with a period unless it ends in ``.``, ``?`` or ``!``."""
    s = (text or "").replace("\r", "").strip().strip('"')
    if s:
        s = s[0].upper() + s[1:]
        if s[-1] not in (".", "?", "!"):
            s = s + "."
    return s
