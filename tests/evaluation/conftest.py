"""Fixtures of the evaluation tests: the FID network converted into a user cache folder."""
import os

import pytest

from helpers.fid_runs import source_archive_or_skip


@pytest.fixture(scope="session")
def fid_cache(tmp_path_factory):
    """A user cache folder in which the weights were converted on first use (by the library)."""
    source_archive_or_skip()
    cache = tmp_path_factory.mktemp("xdg_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        from ernie_vilg2.evaluation.inception import default_weights_path, load_fid_inception

        model = load_fid_inception()
        weights = default_weights_path()
    assert weights.startswith(str(cache)) and os.path.isfile(weights)
    return {"dir": str(cache), "weights": weights, "model": model}
