"""One exception base (ernie_vilg2/errors.py) under every error the tools report, each keeping
its builtin base so that ``except ValueError`` / ``except RuntimeError`` still catch it."""
import pytest

from ernie_vilg2.config import ConfigError
from ernie_vilg2.deploy.export import ExportError
from ernie_vilg2.deploy.json_limits import JsonLimitError
from ernie_vilg2.deploy.program_bounds import ManifestError
from ernie_vilg2.deploy.program_info import ProgramInfoError
from ernie_vilg2.errors import ErnieViLG2Error
from ernie_vilg2.ops.build import BuildError
from ernie_vilg2.pipelines.checks import NonFiniteLatentsError
from ernie_vilg2.training.checkpoint import CheckpointMismatch
from ernie_vilg2.training.expert_parallel import ExpertGroupError
from ernie_vilg2.training.loop import TrainingDiverged
from ernie_vilg2.training.resume import ResumeRefused
from ernie_vilg2.training.run_folder import RunFolderLocked
from ernie_vilg2.utils.integrity import DamagedFileError
from ernie_vilg2.utils.io import DiskFullError
from ernie_vilg2.utils.prompts import PromptColumnError


@pytest.mark.parametrize("error,builtin", [
    (ConfigError, ValueError), (DamagedFileError, ValueError), (DiskFullError, ValueError),
    (ManifestError, ValueError), (ExportError, ValueError), (JsonLimitError, ValueError),
    (ProgramInfoError, ValueError), (NonFiniteLatentsError, ValueError), (PromptColumnError, ValueError),
    (CheckpointMismatch, ValueError), (ResumeRefused, ValueError), (BuildError, RuntimeError),
    (ExpertGroupError, RuntimeError), (TrainingDiverged, RuntimeError), (RunFolderLocked, RuntimeError),
], ids=lambda value: value.__name__)
def test_each_error_has_the_base_and_keeps_its_builtin_one(error, builtin):
    assert issubclass(error, ErnieViLG2Error) and issubclass(error, builtin)

