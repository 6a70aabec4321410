"""Evaluation: FID, the detector-judged composition score and side-by-side sheets."""
