"""``python -m umr``: the ``umr`` command."""

from .cli import main

raise SystemExit(main())
