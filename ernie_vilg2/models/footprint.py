"""Old home of :func:`~ernie_vilg2.models.lazy_init.lazy_init`, kept while
``training/expert_parallel.py`` imports it from here; remove with that import."""
from .lazy_init import lazy_init  # noqa: F401
