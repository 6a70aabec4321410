"""Helpers for the command-line tools (tools/*.py): quieter third-party logging."""
from __future__ import annotations

import logging
import warnings


def quiet_third_party_logs(level: str = "WARNING") -> None:
    """Keep tool output readable: PaddleNLP/PPDiffusers INFO lines and import-time
    deprecation warnings of their dependencies hide the lines a user needs."""
    logging.basicConfig(level=getattr(logging, level), format="%(levelname)s %(name)s: %(message)s")
    for category in (DeprecationWarning, UserWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    from paddlenlp.utils.log import logger as nlp_logger
    from ppdiffusers.utils import logging as diffusers_logging

    nlp_logger.set_level(level)
    diffusers_logging.set_verbosity(getattr(logging, level))
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components..." on every load
