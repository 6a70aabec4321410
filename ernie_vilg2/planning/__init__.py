"""Planning a training run before it starts: model sizes without allocating them
(:mod:`.footprint`) and memory per rank for a layout of GPUs (:mod:`.memory_plan`,
``tools/plan.py``). Imports models and the training config; nothing in the package imports it."""
