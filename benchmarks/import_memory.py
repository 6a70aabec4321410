"""Where the memory of importing each framework goes: a profile of resident memory by package.

The peer benchmark (vs_pytorch.py) counts each process's import in its peak. This script
imports what its U-Net worker imports (Paddle: ``paddle`` + ``ppdiffusers``; PyTorch: ``torch``
+ ``diffusers``), each framework in a fresh process (Paddle as the entry points import it, with
the rest of PaddleNLP's package ``__init__`` deferred, and as ``paddle-full``, with
``ERNIE_VILG2_LEAN_IMPORT=0``), and charges the growth of the process's
resident memory (VmRSS) while a module is created and executed to that module, less what the
modules it imports in turn grew it by. The modules' shares are summed by package (two name
levels for the frameworks' own packages, so PaddleNLP's parts show apart) and printed largest
first, each with the framework package whose import brought it in, and each process's total.

    python benchmarks/import_memory.py                                   # both, top 12 rows
    python benchmarks/import_memory.py --peer-python .venv-peer/bin/python --top 20
    python benchmarks/import_memory.py --frameworks paddle paddle-full
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PEER = os.path.join(ROOT, ".venv-peer", "bin", "python")
IMPORTS = {"paddle": ["paddle", "ppdiffusers"], "paddle-full": ["paddle", "ppdiffusers"],
           "torch": ["torch", "diffusers"]}
# The frameworks' packages: their second name level is shown (paddlenlp.taskflow, ...), and
# every other package is traced back to the one of them that imported it.
FRAMEWORKS = {"paddle", "paddlenlp", "ppdiffusers", "torch", "diffusers"}


def rss_mib() -> float:
    # Not peer_worker.rss_mib: importing peer_worker imports NumPy, before the measurement starts.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


class _MeasuredLoader:
    """Wraps a module's loader: its create/exec time growth, less nested imports', is charged to it."""

    def __init__(self, loader, name: str, profile: "ImportProfile"):
        self._loader, self._name, self._profile = loader, name, profile

    def __getattr__(self, attr):  # get_code, get_source, is_package, ... as the real loader
        return getattr(self._loader, attr)

    def create_module(self, spec):
        return self._profile.measure(self._name, self._loader.create_module, spec)

    def exec_module(self, module):
        module.__loader__ = self._loader  # the module keeps its real loader
        return self._profile.measure(self._name, self._loader.exec_module, module)


class ImportProfile(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: finds each module with the other finders and measures its loading."""

    def __init__(self):
        self.exclusive: dict[str, float] = {}
        self.importer: dict[str, str] = {}  # module -> the module whose loading imported it
        self._loading: list[str] = []
        self._nested = [0.0]  # growth charged to the modules inside each open measurement
        self._finding = False

    def find_spec(self, name, path, target=None):
        if self._finding:
            return None
        self._finding = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._finding = False
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _MeasuredLoader(spec.loader, name, self)
        return spec

    def measure(self, name, call, arg):
        if self._loading:
            self.importer.setdefault(name, self._loading[-1])
        before = rss_mib()
        self._nested.append(0.0)
        self._loading.append(name)
        try:
            return call(arg)
        finally:
            grown = rss_mib() - before
            self._loading.pop()
            nested = self._nested.pop()
            self.exclusive[name] = self.exclusive.get(name, 0.0) + grown - nested
            self._nested[-1] += grown

    def framework_of(self, module: str) -> str:
        """The framework package whose import (directly or through others) loaded `module`."""
        while module.split(".")[0] not in FRAMEWORKS and module in self.importer:
            module = self.importer[module]
        return module.split(".")[0]


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in FRAMEWORKS else parts[0]


def defer_paddlenlp_init(lean: bool) -> None:
    """tune_cpu_process's PaddleNLP setting, from its file alone: importing ernie_vilg2.utils
    would import Pillow before the measurement."""
    path = os.path.join(ROOT, "ernie_vilg2", "utils", "paddlenlp_import.py")
    spec = importlib.util.spec_from_file_location("paddlenlp_import", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.defer_paddlenlp_init({} if lean else {module.ENV: "0"})


def worker(framework: str) -> None:
    if framework.startswith("paddle"):
        defer_paddlenlp_init(lean=framework == "paddle")
    start = rss_mib()
    profile = ImportProfile()
    sys.meta_path.insert(0, profile)
    for name in IMPORTS[framework]:
        __import__(name)
    sys.meta_path.remove(profile)
    by_package: dict[str, list] = {}  # package -> [MiB, framework that brought its first module in]
    for module, mib in profile.exclusive.items():
        row = by_package.setdefault(package_of(module), [0.0, profile.framework_of(module)])
        row[0] += mib
    print(json.dumps({"start": start, "total": rss_mib(), "packages": by_package}))


def measure(python: str, framework: str) -> dict:
    env = dict(os.environ, GLOG_minloglevel="2", PYTHONWARNINGS="ignore")
    done = subprocess.run([python, os.path.abspath(__file__), "--worker", framework], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"error: importing {framework} with {python} failed: "
                         f"{(done.stderr.strip().splitlines() or ['(no output)'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frameworks", nargs="+", choices=sorted(IMPORTS), default=["paddle", "torch"])
    parser.add_argument("--peer-python", default=DEFAULT_PEER, help="python with torch + diffusers")
    parser.add_argument("--top", type=int, default=12, help="packages shown per framework")
    parser.add_argument("--worker", choices=sorted(IMPORTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if "torch" in args.frameworks and not os.path.exists(args.peer_python):
        raise SystemExit(f"error: --peer-python {args.peer_python} does not exist (make bench-peer creates it)")
    for framework in args.frameworks:
        result = measure(args.peer_python if framework == "torch" else sys.executable, framework)
        rows = sorted(result["packages"].items(), key=lambda kv: -kv[1][0])
        shown, rest = rows[:args.top], rows[args.top:]
        print(f"\n{framework}: import {' + '.join(IMPORTS[framework])}: {result['total']:.0f} MiB resident "
              f"(interpreter {result['start']:.0f} MiB, imports {result['total'] - result['start']:.0f} MiB)")
        print("| package | MiB | imported by |\n|---|---:|---|")
        for package, (mib, by) in shown:
            print(f"| {package} | {mib:.0f} | {by} |")
        by_framework: dict[str, float] = {}
        for _, (mib, by) in rows:
            by_framework[by] = by_framework.get(by, 0.0) + mib
        print(f"| {len(rest)} other packages | {sum(m for _, (m, _) in rest):.0f} | |")
        print("by framework package: " + ", ".join(f"{by} {mib:.0f} MiB" for by, mib in
                                                    sorted(by_framework.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
