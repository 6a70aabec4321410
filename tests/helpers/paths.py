"""Paths and sizes the tests share."""
import os

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(TESTS_DIR)
SHARED_DIR = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared"))
FIXTURES = os.path.join(TESTS_DIR, "fixtures")
TINY_YAML = os.path.join(REPO_ROOT, "configs", "tiny.yaml")
CPP_DIR = os.path.join(REPO_ROOT, "deploy", "cpp")
CPP_BUILD_DIR = os.path.join(CPP_DIR, "build")

# The environment of the repository's tools run as subprocesses (this checkout first on the path).
TOOL_ENV = {**os.environ, "GLOG_minloglevel": "2", "PYTHONPATH": REPO_ROOT}

TINY_RESOLUTION = 32  # pixels; latents are 8x8 with the 3-level tiny VAE
TINY_LATENT = 8
