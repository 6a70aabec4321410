"""What several test files share: paths, tiny runs and data, exports, the browser. Tests import
from here (``from helpers.paths import REPO_ROOT``; pytest.ini puts tests/ on the path), never
from conftest.py or from one another."""
