"""Build models without allocating them: ``paddle.LazyGuard`` plus PaddleNLP's
``no_init_weights`` (ERNIE's own weight initialisation would otherwise allocate every
matrix). Under LazyGuard ``numel()`` raises: count parameters from their shapes.
Importing this module imports no Paddle."""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def lazy_init() -> Iterator[None]:
    """Build Paddle / PaddleNLP / PPDiffusers modules without allocating their parameters."""
    import paddle
    from paddlenlp.transformers.model_utils import no_init_weights

    with paddle.LazyGuard(), no_init_weights():
        yield
