"""The HTTP service (deploy/python/serve.py, ernie_vilg2/deploy/serving/) end to end.

Two kinds of server over the tiny export: the script as a subprocess on a free port (the same
images as deploy/python/infer.py, refusals naming the field, SIGTERM, the page in headless
Chromium), and the service in-process over a pipeline whose calls wait at a gate the test opens
(a full queue, deadlines, a client that leaves, batching, graceful shutdown), so that what is
queued or running when is decided by the test, not by timing. Every wait has a deadline.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers.deploy_exports import load_tool
from helpers.headless_chromium import HeadlessChromium
from helpers.paths import REPO_ROOT

# Every test exports the tiny model and starts the service's processes.
pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

SERVE = os.path.join(REPO_ROOT, "deploy", "python", "serve.py")
WAIT = 60  # seconds: the bound of every wait (a hung server fails the test instead of hanging it)
LISTENING = re.compile(r"serving .* on (http://[\d.]+:\d+)")


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _json_images(body: dict):
    return [_pixels(base64.b64decode(image["png_base64"])) for image in body["images"]]


def _wait_until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def _refused(url) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=WAIT)
    except httpx.ConnectError:
        return True
    return False


# -- the script as a subprocess ------------------------------------------------------------------
class ServerProcess:
    """deploy/python/serve.py on a free port; its log is collected by a reader thread."""

    def __init__(self, *args):
        env = dict(os.environ, GLOG_minloglevel="2", PYTHONPATH=os.pathsep.join(
            [REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, SERVE, "--port", "0", *map(str, args)], cwd=REPO_ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.url = _wait_until(lambda: self._url() or self._dead(), "the server listens", timeout=180)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def _url(self):
        return next((m.group(1) for m in map(LISTENING.search, list(self.lines)) if m), None)

    def _dead(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited {self.proc.returncode}: {''.join(self.lines)[-3000:]}")

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def sampling_process(self):
        """The spawned child that owns the predictors."""
        import psutil

        (child,) = [p for p in psutil.Process(self.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        return child

    def wait(self) -> int:
        """The exit status, once the server and its log are complete."""
        code = self.proc.wait(timeout=WAIT)
        self.reader.join(WAIT)
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
            raise AssertionError(f"the server did not stop on SIGTERM: {self.log[-3000:]}")


@pytest.fixture(scope="module")
def server(export_n1):
    proc = ServerProcess("--model", export_n1, "--max-batch", 8, "--max-queue", 8, "--timeout", 120)
    yield proc
    assert proc.stop() == 0, proc.log[-3000:]


def _post(url, body=None, content=None, headers=None, timeout=WAIT):
    return httpx.post(f"{url}/generate", json=body, content=content, headers=headers, timeout=timeout)


def _infer_py_images(export, tmp_path, prompts, *flags):
    """deploy/python/infer.py's single images for ``prompts`` and ``flags`` (run in-process)."""
    out = tmp_path / "infer" / "grid.png"
    args = ["--model", export, "--out", str(out), *map(str, flags)]
    for prompt in prompts:
        args += ["--prompt", prompt]
    assert load_tool("deploy/python/infer.py").main(args) == 0
    return [np.asarray(Image.open(path).convert("RGB")) for path in sorted(out.parent.glob("grid_*.png"))]


def test_same_seed_gives_infer_py_images(server, export_n1, tmp_path):
    prompts = ["红苹果", "a blue heart"]
    settings = {"seed": 3, "steps": 6, "guidance": 3.0, "sampler": "ddim", "negative_prompt": "灰色"}
    reply = _post(server.url, {"prompts": prompts, "num_images_per_prompt": 2, **settings})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["request_id"] == reply.headers["X-Request-ID"]
    assert body["settings"] == {"prompts": prompts, "num_images_per_prompt": 2, **settings, "height": 32, "width": 32}
    expected = _infer_py_images(export_n1, tmp_path, prompts, "--num-images-per-prompt", 2, "--seed", 3, "--steps", 6,
                                "--guidance", 3, "--sampler", "ddim", "--negative-prompt", "灰色")
    served = _json_images(body)
    assert [image["prompt"] for image in body["images"]] == ["红苹果", "红苹果", "a blue heart", "a blue heart"]
    assert len(served) == len(expected) == 4
    for got, want in zip(served, expected):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(served[0], served[1])  # each image its own noise row


def test_png_answer_and_drawn_seed(server, export_n1, tmp_path):
    reply = _post(server.url, {"prompt": "frog", "steps": 4}, headers={"Accept": "image/png",
                                                                        "X-Request-ID": "client-id.42"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    assert reply.headers["X-Request-ID"] == "client-id.42"
    seed = int(reply.headers["X-Seed"])
    assert 0 <= seed < 2**32
    (expected,) = _infer_py_images(export_n1, tmp_path, ["frog"], "--seed", seed, "--steps", 4)  # dpm, 2.1
    np.testing.assert_array_equal(_pixels(reply.content), expected)
    _wait_until(lambda: "[client-id.42]" in server.log, "a log line with the request's id")
    as_json = _post(server.url, {"prompt": "frog", "steps": 4, "seed": seed, "format": "json"},
                    headers={"Accept": "image/png"})
    assert as_json.headers["content-type"].startswith("application/json")  # the field wins over Accept
    np.testing.assert_array_equal(_json_images(as_json.json())[0], expected)


REFUSED = [
    ({"prompt": "x", "steps": 0}, 422, "steps", "steps must be a positive integer, got 0"),
    ({"prompt": "x", "steps": "5"}, 422, "steps", "steps must be an integer"),
    ({"prompt": "x", "steps": 2.5}, 422, "steps", "steps must be an integer"),
    ({"prompt": "x", "steps": 1000}, 422, "steps", "steps must be <= 999 with DPMSolverMultistepScheduler"),
    ({"prompt": "x", "guidance": -1}, 422, "guidance", "guidance must be >= 0 and finite"),
    ({"prompt": "x", "guidance": "high"}, 422, "guidance", "guidance must be a number"),
    ({"prompt": "x", "guidance": 10**400}, 422, "guidance", "guidance must be >= 0 and finite"),  # no float holds it
    ({"prompt": "x", "guidance": [3, 2]}, 422, "guidance", "guidance must be one number or 1 (one per expert), got 2"),
    ({"prompt": "x", "guidance": []}, 422, "guidance", "guidance must be one number or 1 (one per expert), got 0"),
    ({"prompt": "x", "guidance": ["3"]}, 422, "guidance", "guidance must be a number, got '3'"),
    ({"prompt": "x", "guidance": [[3]]}, 422, "guidance", "guidance must be a number, got [3]"),
    ({"prompt": "x", "guidance": [-1]}, 422, "guidance", "guidance must be >= 0 and finite, got -1"),
    ({"prompt": "x", "guidance": {"expert": 3}}, 422, "guidance", "guidance must be a number, got {'expert': 3}"),
    ({"prompt": "x", "seed": -1}, 422, "seed", "seed must be an integer >= 0"),
    ({"prompt": "x", "seed": 2**63}, 422, "seed", "seed must be an integer >= 0 and <= 2**63 - 1"),
    ({"prompt": "x", "seed": True}, 422, "seed", "seed must be an integer"),
    ({"prompt": "x", "sampler": "euler"}, 422, "sampler", "sampler must be one of ddim, dpm"),
    ({"prompt": "x", "num_images_per_prompt": 0}, 422, "num_images_per_prompt", "num_images_per_prompt must be >= 1"),
    ({"prompt": "x", "num_images_per_prompt": 9}, 422, "num_images_per_prompt",
     "num_images_per_prompt: at most 8 images per request"),
    ({"prompts": ["x"] * 9}, 422, "prompts", "prompts: at most 8 images per request"),
    ({"prompt": "x", "height": 64}, 422, "height", "height must be 32: the export was built for 32x32"),
    ({"prompt": "x", "width": "32"}, 422, "width", "width must be an integer"),
    ({}, 422, "prompt", "prompt: expected a string, got null"),
    ({"prompt": ""}, 422, "prompt", "prompt[0]: the prompt is empty"),
    ({"prompt": 5}, 422, "prompt", "prompt: expected a string, got a number"),
    ({"prompts": "x"}, 422, "prompts", "prompts: expected a list of strings, got a string"),
    ({"prompts": []}, 422, "prompts", "prompts: no prompt given"),
    ({"prompts": ["ok", 7]}, 422, "prompts", "prompts[1]: expected a string, got int"),
    ({"prompt": "x", "prompts": ["y"]}, 422, "prompts", "prompts: give either prompt"),
    ({"prompt": "x" * 1001}, 422, "prompt", "prompt: at most 1000 characters, got 1001"),
    ({"prompt": "x", "negative_prompt": 5}, 422, "negative_prompt", "negative_prompt: expected a string"),
    ({"prompt": "x", "stepz": 5}, 422, "stepz", "stepz: unknown field"),
    ({"prompt": "x", "format": "gif"}, 422, "format", "format must be one of png, json"),
    ({"prompts": ["x", "y"], "format": "png"}, 422, "format", "format: image/png holds one image"),
]


@pytest.mark.parametrize("body,status,field,message", REFUSED, ids=[r[3][:40] for r in REFUSED])
def test_bad_field_is_refused_naming_it(server, body, status, field, message):
    reply = _post(server.url, body)
    assert (reply.status_code, reply.json()["field"]) == (status, field), reply.text
    assert reply.json()["error"].startswith(message), reply.text
    assert reply.json()["request_id"] == reply.headers["X-Request-ID"]


RAW_REFUSED = [
    (b'{"prompt": "x",', 400, "body: not valid JSON"),
    (b'["x"]', 400, "body: expected a JSON object, got a list"),
    (b'{"prompt": "\xff"}', 400, "body: not valid UTF-8 (byte 0xff at offset 12)"),
    (b'{"prompt": "\\ud800"}', 422, "prompt[0]: not valid Unicode text (lone surrogate U+D800"),
    (b'{"prompt": ' + b"[" * 10000 + b"]" * 10000 + b"}", 400, "body: nested deeper than 4 levels"),
    (b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}", 400, "body: not valid JSON"),
    (b'{"prompt": "x", "guidance": [NaN]}', 422, "guidance must be >= 0 and finite, got nan"),
    (b'{"prompt": "x", "guidance": Infinity}', 422, "guidance must be >= 0 and finite, got inf"),
    (b'{"prompt": "' + b"a" * (1 << 20) + b'"}', 413, "body: larger than 65536 bytes"),
]


@pytest.mark.parametrize("content,status,message", RAW_REFUSED, ids=[r[2][:30] for r in RAW_REFUSED])
def test_malformed_body_is_refused(server, content, status, message):
    reply = _post(server.url, content=content, headers={"Content-Type": "application/json"})
    assert reply.status_code == status and reply.json()["error"].startswith(message), reply.text


def test_only_the_samplers_the_export_offers(export_n1):
    from ernie_vilg2.deploy.manifest import read_manifest
    from ernie_vilg2.deploy.serving.validation import RequestError, RequestRules, check_request

    samplers = read_manifest(export_n1, verify="size")["samplers"]
    assert samplers["default"] == "ddim" and {"ddim", "dpm"} <= set(samplers)
    rules = RequestRules.from_export(samplers, (32, 32), 8)
    assert check_request({"prompt": "x"}, rules, lambda: 0).sampler == "dpm"  # infer.py's --sampler default
    only_ddim = RequestRules.from_export({"ddim": samplers["ddim"], "default": "ddim"}, (32, 32), 8)
    assert check_request({"prompt": "x"}, only_ddim, lambda: 0).sampler == "ddim"  # else the export's default
    with pytest.raises(RequestError) as refused:
        check_request({"prompt": "x", "sampler": "dpm"}, only_ddim, lambda: 0)
    assert refused.value.field == "sampler"
    assert str(refused.value) == "sampler: dpm is not offered by this export (manifest field 'samplers' offers: ddim)"


def test_guidance_per_expert_is_checked_and_batched_by_its_scales(export_n1):
    from ernie_vilg2.deploy.manifest import read_manifest
    from ernie_vilg2.deploy.serving.validation import RequestError, RequestRules, check_request

    rules = RequestRules.from_export(read_manifest(export_n1, verify="size")["samplers"], (32, 32), 8, num_experts=4)
    listed = check_request({"prompt": "x", "guidance": [3, 1, 0.5, 2]}, rules, lambda: 0)
    assert listed.settings()["guidance"] == [3.0, 1.0, 0.5, 2.0] and listed.scales == (3.0, 1.0, 0.5, 2.0)
    one, same = (check_request({"prompt": "x", "guidance": g}, rules, lambda: 0) for g in (3, [3, 3, 3, 3]))
    assert one.settings()["guidance"] == 3.0 and same.settings()["guidance"] == [3.0] * 4
    assert one.batch_key == same.batch_key != listed.batch_key  # the same images: one pipeline call
    with pytest.raises(RequestError) as refused:
        check_request({"prompt": "x", "guidance": [3, 2]}, rules, lambda: 0)
    assert (refused.value.field, str(refused.value)) == ("guidance", "guidance must be one number or 4 (one per "
                                                                     "expert), got 2")


def test_accept_png_for_several_images_is_406(server):
    reply = _post(server.url, {"prompts": ["x", "y"]}, headers={"Accept": "image/png"})
    assert reply.status_code == 406 and reply.json()["field"] == "Accept", reply.text


def test_health_and_unknown_paths(server, export_n1):
    health = httpx.get(f"{server.url}/health", timeout=WAIT).json()
    assert health["ready"] is True and health["status"] == "ok"
    assert health["model"] == os.path.abspath(export_n1)
    assert (health["queue_depth"], health["max_queue"], health["max_batch"]) == (0, 8, 8)
    assert health["image"] == {"height": 32, "width": 32} and health["num_experts"] == 1
    missing = httpx.get(f"{server.url}/nope", timeout=WAIT)
    assert missing.status_code == 404 and missing.json()["error"] == "Not Found: GET /nope"
    wrong = httpx.get(f"{server.url}/generate", timeout=WAIT)
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]


def test_sigterm_finishes_the_request_in_flight(export_n1):
    proc = ServerProcess("--model", export_n1)
    sampling = proc.sampling_process()
    try:
        sampling.suspend()  # SIGSTOP: the request stays in flight until the test resumes it
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reply = pool.submit(_post, proc.url, {"prompt": "frog", "steps": 4, "seed": 1})
            _wait_until(lambda: httpx.get(f"{proc.url}/health", timeout=WAIT).json()["queue_depth"] == 1,
                        "the request is queued")
            proc.proc.send_signal(signal.SIGTERM)
            _wait_until(lambda: "stopping: no new connections; 1 requests in flight" in proc.log, "the stop begins")
            _wait_until(lambda: _refused(proc.url), "new connections are refused")
            sampling.resume()
            assert reply.result(timeout=WAIT).status_code == 200
        assert proc.wait() == 0
        assert proc.log.rstrip().endswith("stopped"), proc.log[-2000:]
        assert not sampling.is_running()
    finally:
        if sampling.is_running():
            sampling.resume()
        proc.stop()


@pytest.mark.parametrize("args,message", [
    (["--model", "nowhere"], "error: --model: export folder not found: nowhere"),
    (["--max-batch", "0"], "error: --max-batch must be >= 1, got 0"),
    (["--timeout", "0"], "error: --timeout must be > 0, got 0.0"),
    (["--port", "70000"], "error: --port must be in [0, 65535], got 70000"),
])
def test_cli_refuses_bad_flags(export_n1, args, message, capsys):
    argv = args if args[0] == "--model" else ["--model", export_n1, *args]
    with pytest.raises(SystemExit) as exit_info:
        load_tool("deploy/python/serve.py").main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_cli_refuses_a_taken_port(export_n1, server):
    port = server.url.rsplit(":", 1)[1]
    done = subprocess.run([sys.executable, SERVE, "--model", export_n1, "--port", port], cwd=REPO_ROOT,
                          env=dict(os.environ, GLOG_minloglevel="2"), capture_output=True, text=True, timeout=180)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: --host/--port: cannot listen on 127.0.0.1:{port}")


# -- the service in-process, its pipeline behind a gate ---------------------------------------------
class Gate:
    """A gate the sampling process waits at and the test opens: a file, not a multiprocessing
    Event, so that killing the process while it waits cannot leave the opener blocked (an
    Event's set() waits for every waiter to wake)."""

    def __init__(self, path):
        self.path = str(path)

    def set(self):
        open(self.path, "w").close()

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


class GatedPipeline:
    """An InferencePipeline whose calls wait until ``gate`` is open; writes each call's prompts
    and how it ended ("images" or the exception's class name) to the JSON-lines file ``record``."""

    def __init__(self, pipe, gate, record):
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "_gate", gate)
        object.__setattr__(self, "_record", record)

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __setattr__(self, name, value):  # the sampling process swaps the scheduler
        setattr(self._pipe, name, value)

    def _write(self, entry):
        with open(self._record, "a") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def __call__(self, prompts, **kwargs):
        self._write({"prompts": list(prompts)})
        if not self._gate.wait(WAIT):
            raise RuntimeError("the test never opened the gate")
        try:
            out = self._pipe(prompts, **kwargs)
        except BaseException as exc:
            self._write({"outcome": type(exc).__name__})
            raise
        self._write({"outcome": "images"})
        return out


class GatedLoader:
    """The service's pipeline loader for these tests (picklable: it runs in the sampling process)."""

    def __init__(self, folder, gate, record):
        self.folder, self.gate, self.record = folder, gate, record

    def __call__(self):
        from ernie_vilg2.deploy.serving import ExportLoader

        return GatedPipeline(ExportLoader(self.folder, verify="size")(), self.gate, self.record)


class InProcessServer:
    """The service over a GatedPipeline, served on a free port by a thread with its own event loop."""

    def __init__(self, export, record, **config):
        from ernie_vilg2.deploy.serving import Service, ServiceConfig, serve

        self.gate = Gate(record.with_suffix(".gate"))
        self.record = record
        self.service = Service(ServiceConfig(model=export, **config), GatedLoader(export, self.gate, str(record)))
        self.service.start()
        self.loop = asyncio.new_event_loop()
        listening = concurrent.futures.Future()

        async def main():
            self.stop_event = asyncio.Event()
            await serve(self.service, "127.0.0.1", 0, self.stop_event, on_listening=listening.set_result)

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d" % listening.result(timeout=WAIT)[1]

    def _entries(self, key):
        if not self.record.exists():
            return []
        return [entry[key] for entry in map(json.loads, self.record.read_text().splitlines()) if key in entry]

    @property
    def calls(self):
        """The prompts of each pipeline call so far."""
        return self._entries("prompts")

    @property
    def outcomes(self):
        return self._entries("outcome")

    def depth(self) -> int:
        return httpx.get(f"{self.url}/health", timeout=WAIT).json()["queue_depth"]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)

    def close(self) -> None:
        self.gate.set()
        self.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive() and not self.service.worker.is_alive()
        assert not self.service.worker.process.is_alive()
        self.loop.close()


@pytest.fixture
def start_server(export_n1, tmp_path):
    started = []

    def start(export=export_n1, **config):
        started.append(InProcessServer(export, tmp_path / f"calls{len(started)}.jsonl", **config))
        return started[-1]

    yield start
    for srv in started:
        srv.close()


def test_full_queue_answers_429_with_retry_after(start_server):
    srv = start_server(max_queue=2, max_batch=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(_post, srv.url, {"prompt": p, "steps": 2}) for p in ("a", "b")]
        _wait_until(lambda: srv.depth() == 2, "two requests queued")
        full = _post(srv.url, {"prompt": "c", "steps": 2})
        assert full.status_code == 429, full.text
        assert full.json()["error"] == "the queue is full (2 requests); retry later"
        assert int(full.headers["Retry-After"]) >= 1
        srv.gate.set()
        assert [reply.result(timeout=WAIT).status_code for reply in waiting] == [200, 200]
    assert _post(srv.url, {"prompt": "c", "steps": 2}).status_code == 200


def test_deadline_answers_504_and_drops_the_work(start_server):
    srv = start_server(timeout=1.0, max_batch=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = [pool.submit(_post, srv.url, {"prompt": p, "steps": 3}) for p in ("a", "b")]
        for reply in replies:
            reply = reply.result(timeout=WAIT)
            assert reply.status_code == 504
            assert reply.json()["error"] == "not done within the service's timeout (1 s)"
    assert srv.depth() == 0
    srv.gate.set()  # the call that was running goes on, sees both requests gone, stops
    _wait_until(lambda: srv.outcomes, "the running call ended")
    assert srv.outcomes == ["_Abandoned"] and len(srv.calls) == 1  # the queued one never ran
    assert srv.service.queue.stats() == {"queue_depth": 0, "queued_images": 0, "batches_run": 1}


def test_client_that_disconnects_leaves_nothing_behind(start_server):
    srv = start_server()
    body = json.dumps({"prompt": "a", "steps": 3}).encode()
    host, port = srv.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as client:
        client.sendall(b"POST /generate HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
        _wait_until(lambda: srv.calls, "its call started")
    # The client closed the connection without an answer.
    _wait_until(lambda: srv.depth() == 0, "the request is dropped")
    srv.gate.set()
    _wait_until(lambda: srv.outcomes, "the running call ended")
    assert srv.outcomes == ["_Abandoned"]
    assert srv.service.queue.stats()["queued_images"] == 0


def test_batching_groups_compatible_requests(start_server, export_n1, tmp_path):
    srv = start_server(max_batch=4)
    ddim = {"steps": 3, "sampler": "ddim"}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(_post, srv.url, {"prompt": "x", **ddim})
        _wait_until(lambda: srv.calls, "the first call started")
        apple = pool.submit(_post, srv.url, {"prompt": "红苹果", "seed": 5, **ddim})
        _wait_until(lambda: srv.depth() == 2, "queued")
        other = pool.submit(_post, srv.url, {"prompt": "q", "steps": 4, "sampler": "ddim"})  # other settings
        _wait_until(lambda: srv.depth() == 3, "queued")
        pair = pool.submit(_post, srv.url, {"prompts": ["a blue heart", "黄色方块"], "num_images_per_prompt": 2,
                                            "seed": 6, **ddim})
        _wait_until(lambda: srv.depth() == 4, "queued")
        srv.gate.set()
        replies = [reply.result(timeout=WAIT) for reply in (first, apple, other, pair)]
    assert [reply.status_code for reply in replies] == [200] * 4
    # Oldest request's settings first; a request larger than the room left goes on in a later call.
    assert srv.calls == [["x"], ["红苹果", "a blue heart", "a blue heart", "黄色方块"], ["q"], ["黄色方块"]]
    apple, pair = replies[1].json(), replies[3].json()
    assert apple["batches"] == [{"number": 2, "images": 4, "requests": 2}]
    assert pair["batches"] == [{"number": 2, "images": 4, "requests": 2}, {"number": 4, "images": 1, "requests": 1}]
    # Batched or not, each image is infer.py's for its request's seed.
    (expected,) = _infer_py_images(export_n1, tmp_path / "apple", ["红苹果"], "--seed", 5, "--steps", 3,
                                   "--sampler", "ddim")
    np.testing.assert_array_equal(_json_images(apple)[0], expected)
    expected = _infer_py_images(export_n1, tmp_path / "pair", ["a blue heart", "黄色方块"], "--seed", 6, "--steps", 3,
                                "--sampler", "ddim", "--num-images-per-prompt", 2)
    for got, want in zip(_json_images(pair), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_per_expert_guidance_is_the_runners_and_batches_by_each_experts_scale(start_server, bank):
    from ernie_vilg2.deploy import InferencePipeline

    export = bank[2]
    srv = start_server(export=export, max_batch=4)
    assert httpx.get(f"{srv.url}/health", timeout=WAIT).json()["num_experts"] == 10
    listed, other = [3.0, 1.0, 0.5, 2.0, 3.0, 1.0, 0.5, 2.0, 3.0, 1.0], [1.0, 3.0, 2.0, 0.5, 1.0, 3.0, 2.0, 0.5, 1.0, 3.0]
    ddim = {"steps": 10, "sampler": "ddim"}  # 10 steps: every expert runs one
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        first = pool.submit(_post, srv.url, {"prompt": "x", "guidance": listed, **ddim})
        _wait_until(lambda: srv.calls, "the first call started")
        bodies = [{"prompt": "红苹果", "seed": 5, "guidance": listed}, {"prompt": "q", "guidance": other},
                  {"prompt": "a blue heart", "seed": 6, "guidance": 2.5},
                  {"prompt": "黄色方块", "seed": 7, "guidance": [2.5] * 10}]
        replies = []
        for depth, body in enumerate(bodies, 2):
            replies.append(pool.submit(_post, srv.url, {**body, **ddim}))
            _wait_until(lambda: srv.depth() == depth, "queued")
        srv.gate.set()
        replies = [reply.result(timeout=WAIT) for reply in (first, *replies)]
    assert [reply.status_code for reply in replies] == [200] * 5, [reply.text for reply in replies]
    # Equal scales per expert share a call (2.5 and [2.5] * 10); other lists do not.
    assert srv.calls == [["x"], ["红苹果"], ["q"], ["a blue heart", "黄色方块"]]
    assert [reply.json()["settings"]["guidance"] for reply in replies] == [listed, listed, other, 2.5, [2.5] * 10]
    runner = InferencePipeline.from_export(export, sampler="ddim", verify="size")
    for reply, body in zip(replies[1:], bodies):
        (want,) = runner(body["prompt"], num_inference_steps=10, guidance_scale=body["guidance"],
                         seed=reply.json()["settings"]["seed"]).images
        np.testing.assert_array_equal(_json_images(reply.json())[0], np.asarray(want))
    (with_other,) = runner("红苹果", num_inference_steps=10, guidance_scale=other, seed=5).images
    assert not np.array_equal(_json_images(replies[1].json())[0], np.asarray(with_other))  # the list decides


def test_graceful_shutdown_finishes_the_requests_in_flight(start_server):
    srv = start_server(max_batch=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(_post, srv.url, {"prompt": "a", "steps": 2})
        _wait_until(lambda: srv.calls, "the first call started")
        queued = pool.submit(_post, srv.url, {"prompt": "b", "steps": 2})
        _wait_until(lambda: srv.depth() == 2, "queued")
        srv.stop()
        _wait_until(lambda: _refused(srv.url), "new connections are refused")
        srv.gate.set()
        assert [reply.result(timeout=WAIT).status_code for reply in (running, queued)] == [200, 200]
    srv.thread.join(WAIT)
    assert not srv.thread.is_alive() and not srv.service.worker.is_alive()
    assert srv.outcomes == ["images", "images"]


def test_a_dead_sampling_process_fails_the_requests_instead_of_hanging(start_server):
    srv = start_server(max_batch=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(_post, srv.url, {"prompt": "a", "steps": 2})
        _wait_until(lambda: srv.calls, "the first call started")
        queued = pool.submit(_post, srv.url, {"prompt": "b", "steps": 2})
        _wait_until(lambda: srv.depth() == 2, "queued")
        srv.service.worker.process.kill()
        for reply in (running, queued):
            reply = reply.result(timeout=WAIT)
            assert reply.status_code == 500
            assert reply.json()["error"] == "generation failed: the sampling process died (exit status -9)"
    health = httpx.get(f"{srv.url}/health", timeout=WAIT).json()
    assert (health["status"], health["ready"], health["queue_depth"]) == ("sampling process died", False, 0)
    refused = _post(srv.url, {"prompt": "c"})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert refused.json()["error"] == "the sampling process died; restart the service"


# -- the page in a browser ------------------------------------------------------------------------
def test_page_generates_an_image_in_chromium(server, chromium):
    with HeadlessChromium(chromium, timeout=60) as browser:
        browser.goto(server.url + "/")
        browser.click("#prompt")
        browser.send("Input.insertText", {"text": "红苹果 and a frog"})
        browser.evaluate("document.getElementById('steps').value = '4'")
        browser.click("#generate")
        browser.wait_for("document.getElementById('image').complete && "
                         "document.getElementById('image').naturalWidth === 32 && !document.getElementById('image').hidden")
        assert browser.evaluate("document.getElementById('caption').textContent").startswith("红苹果 and a frog (seed ")
        assert browser.evaluate("document.getElementById('status').textContent") == ""
        browser.evaluate("document.getElementById('steps').value = '1000'")  # the service's limit, not the form's
        browser.click("#generate")
        browser.wait_for("document.getElementById('status').classList.contains('error')")
        assert browser.evaluate("document.getElementById('status').textContent").startswith(
            "steps must be <= 999 with DPMSolverMultistepScheduler")
        assert browser.errors == []
        assert all(url.startswith((server.url, "blob:", "data:")) for url in browser.requests), browser.requests
