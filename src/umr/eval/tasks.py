"""The benchmark task type, re-exported where it was first published: it lives with the readers
(:mod:`umr.data.tasks`) so that ``data`` never imports ``eval``."""

from ..data.tasks import (CATEGORIES, UMRB_GROUPS, RetrievalTask, category_of, group_of, parse_category,
                          target_of_category)

__all__ = ["CATEGORIES", "UMRB_GROUPS", "RetrievalTask", "category_of", "group_of", "parse_category",
           "target_of_category"]
