"""Deployment: export a saved pipeline to Paddle Inference programs and run them.

``export_pipeline`` (:mod:`.export`) may import the whole training stack; the runner
(``InferencePipeline`` in :mod:`.pipeline`, with :mod:`.tokenizer`, :mod:`.schedulers`,
:mod:`.predictor` and :mod:`.manifest`) needs only paddle and NumPy: it imports neither
PPDiffusers nor PaddleNLP. Names load lazily so that importing one half never loads the
other. Nothing in models/, pipelines/ or training/ imports this package.
"""
from ..utils.lazy import lazy_getattr

_LAZY = {
    "InferencePipeline": ".pipeline",
    "PredictorSettings": ".predictor",
    "export_pipeline": ".export",
    "ExportError": ".export",
    "ManifestError": ".manifest",
    "read_manifest": ".manifest",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
