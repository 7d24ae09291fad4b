"""The sandbox contains hostile programs, records each with the right status, and keeps going."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from harness.sandbox.executor import Sandbox, SandboxPolicy
from harness.sandbox.isolation import bwrap_works, plan_isolation
from harness.sandbox.runtime import landlock_abi

REPO = Path(__file__).resolve().parents[1]
FAST = SandboxPolicy(wall_seconds=3, cpu_seconds=1, memory_mb=256, output_chars=2000)
# The fallback without bubblewrap must contain programs too; it relies on Landlock for the filesystem.
MODES = ["auto"] + (["process"] if bwrap_works() and landlock_abi() else [])
FILESYSTEM_ISOLATED = bwrap_works() or landlock_abi() > 0
needs_filesystem_isolation = pytest.mark.skipif(
    not FILESYSTEM_ISOLATED, reason="neither bubblewrap nor Landlock is available on this machine")


class Tools:
    """A tool handler that records calls; ``fail`` raises, ``echo`` returns its arguments."""

    names = ["echo", "fail", "inf"]

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def call(self, name, args, kwargs):
        self.calls.append((name, args, kwargs))
        if name == "fail":
            raise ValueError("the detector is broken")
        if name == "inf":
            return float("inf")
        return {"args": args, "kwargs": kwargs}


@pytest.fixture(scope="module", params=MODES)
def sandbox(request):
    with Sandbox(FAST, isolation=request.param) as box:
        yield box


def run(sandbox: Sandbox, code: str, tools=None, **policy):
    return sandbox.run(code, tools or Tools(), (64, 48), SandboxPolicy(**{**FAST.__dict__, **policy}) if policy else None)


def test_isolation_layers_are_recorded(sandbox):
    result = run(sandbox, "final_answer = 1")
    assert result.status == "ok" and result.answer == 1
    assert "rlimits" in result.isolation and "scrubbed-env" in result.isolation
    if sandbox.plan.launcher == "bwrap":
        assert result.isolation[0] == "bwrap"


def test_ok_program_with_tool_calls_image_and_early_return(sandbox):
    tools = Tools()
    code = (
        "got = echo(image, [1, 2.5], phrase='cup')\n"
        "final_answer = [image.width, image.height, got['args'][1], got['kwargs']['phrase']]\n"
        "if image.size == (64, 48):\n"
        "    return\n"
        "final_answer = 'not reached'\n")
    result = run(sandbox, code, tools)
    assert result.status == "ok"
    assert result.answer == [64, 48, [1, 2.5], "cup"]
    assert result.answer_pytype == "builtins.list"
    assert tools.calls == [("echo", [{"__image__": True}, [1, 2.5]], {"phrase": "cup"})]
    assert result.tool_calls[0]["tool"] == "echo" and result.tool_calls[0]["args"] == ["<image>", [1, 2.5]]
    assert "result" in result.tool_calls[0] and result.tool_calls[0]["seconds"] >= 0


def test_statuses_for_ordinary_failures(sandbox):
    assert run(sandbox, "x = 1").status == "no_answer"
    crashed = run(sandbox, "final_answer = 3\nraise KeyError('box')")
    assert crashed.status == "exception" and "KeyError: 'box'" in crashed.detail and '"<program>", line 2' in crashed.detail
    syntax = run(sandbox, "final_answer = (")
    assert syntax.status == "exception" and "SyntaxError" in syntax.detail
    tool = run(sandbox, "final_answer = fail(image)")
    assert tool.status == "tool_error" and "the detector is broken" in tool.detail
    caught = run(sandbox, "try:\n    fail(image)\nexcept ToolError as e:\n    final_answer = str(e)")
    assert caught.status == "ok" and "the detector is broken" in caught.answer
    assert run(sandbox, "final_answer = inf(image) > 1e308").answer is True
    unknown = run(sandbox, "final_answer = nope(image)")
    assert unknown.status == "exception" and "NameError" in unknown.detail
    numpy_bool = run(sandbox, "import numpy as np\nfinal_answer = np.array([1, 2]).sum() > 2")
    assert numpy_bool.answer is True and numpy_bool.answer_pytype.startswith("numpy.bool")


def test_no_network(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    result = run(sandbox, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nfinal_answer = 'connected'")
    assert result.status == "exception" and result.answer is None
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()
    dns = run(sandbox, "import urllib.request\nfinal_answer = urllib.request.urlopen('http://example.com', timeout=1).status")
    assert dns.status == "exception"


@needs_filesystem_isolation
def test_cannot_write_outside_its_directory(sandbox, tmp_path):
    target = tmp_path / "written-by-program"
    for path in (target, REPO / "written-by-program", Path("/etc/written-by-program")):
        result = run(sandbox, f"open({str(path)!r}, 'w').write('x')\nfinal_answer = 'wrote'")
        assert result.status == "exception", path
        assert not path.exists()
    own = run(sandbox, "import os\nopen('scratch.txt', 'w').write('ok')\nfinal_answer = open('scratch.txt').read()")
    assert own.status == "ok" and own.answer == "ok"


def test_cannot_read_environment_secrets(sandbox, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    result = run(sandbox, "import os\nfinal_answer = dict(os.environ)")
    assert result.status == "ok" and "OPENAI_API_KEY" not in result.answer
    assert "sk-do-not-leak" not in str(result.answer)


@needs_filesystem_isolation
def test_cannot_read_files_outside(sandbox, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o644)
    for path in (secret, REPO / "README.md", Path.home()):
        leaked = run(sandbox, f"import os\np = {str(path)!r}\nfinal_answer = os.listdir(p) if os.path.isdir(p) else open(p).read()")
        assert leaked.status == "exception", path
        assert "top secret" not in str(leaked.answer)


def test_cannot_spawn_processes_or_fork_bomb(sandbox, tmp_path):
    marker = tmp_path / "spawned"
    spawn = run(sandbox, f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])\nfinal_answer = 1")
    assert spawn.status == "exception" and not marker.exists()
    system = run(sandbox, f"import os\nfinal_answer = os.system('touch {marker}')")
    assert not marker.exists() and system.answer != 0
    bomb = run(sandbox, "import os\nwhile True:\n    os.fork()")
    assert bomb.status == "exception" and ("PermissionError" in bomb.detail or "BlockingIOError" in bomb.detail)
    threads = run(sandbox, "import threading\nthreading.Thread(target=print).start()\nfinal_answer = 1")
    assert threads.status == "exception"


def test_memory_bomb(sandbox):
    result = run(sandbox, "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))", cpu_seconds=5,
                 memory_mb=128)
    assert result.status == "memory"


def test_endless_loops_time_out(sandbox):
    busy = run(sandbox, "while True:\n    pass")
    assert busy.status == "timeout" and "CPU" in busy.detail
    sleepy = run(sandbox, "import time\nwhile True:\n    time.sleep(0.1)", wall_seconds=1.0)
    assert sleepy.status == "timeout" and "wall-clock" in sleepy.detail
    stubborn = run(sandbox, "import signal\nfor s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGALRM):\n"
                            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass")
    assert stubborn.status == "timeout"


def test_huge_output_is_capped(sandbox):
    result = run(sandbox, "for i in range(20000):\n    print('x' * 1000)\nimport os\n"
                          "os.write(1, b'y' * 10**6)\nfinal_answer = i")
    assert result.status == "ok" and result.answer == 19999
    assert len(result.stdout) < 2200 and "more characters of output dropped" in result.stdout


def test_exits_are_contained(sandbox):
    exited = run(sandbox, "final_answer = 5\nimport sys\nsys.exit(0)")
    assert exited.status == "exception" and "exit(0)" in exited.detail
    hard = run(sandbox, "import os\nos._exit(0)")
    assert hard.status == "killed" and "before returning a result" in hard.detail
    segfault = run(sandbox, "import ctypes\nctypes.string_at(0)")
    assert segfault.status == "killed" and "SIGSEGV" in segfault.detail


def test_tampering_with_the_tool_channel_or_signals(sandbox):
    garbage = run(sandbox, "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'\\x00\\x00\\x00\\x05hello')\n"
                           "    except OSError:\n        pass\nfinal_answer = echo(image)")
    assert garbage.status == "killed" and "protocol" in garbage.detail
    huge = run(sandbox, "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'\\xff\\xff\\xff\\xff')\n"
                        "    except OSError:\n        pass\nimport time\ntime.sleep(5)")
    assert huge.status == "killed" and "exceeds" in huge.detail
    parent = run(sandbox, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nfinal_answer = 1")
    assert parent.status == "exception"
    assert run(sandbox, "final_answer = 'still here'").answer == "still here"


def test_many_programs_at_once(sandbox):
    results = [None] * 24

    def one(i):
        results[i] = run(sandbox, f"total = 0\nfor k in range(5):\n    total += len(echo(image, k)['args'])\nfinal_answer = total + {i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.answer for r in results] == [10 + i for i in range(24)]


def test_the_zygote_restarts_after_it_dies():
    with Sandbox(FAST) as box:
        assert box.run("final_answer = 1").answer == 1
        os.killpg(box._process.pid, 9)
        box._process.wait()
        assert box.run("final_answer = 2").answer == 2


def test_unknown_isolation_mode():
    with pytest.raises(Exception, match="unknown isolation mode"):
        plan_isolation("docker")


def test_exec_command_prints_the_result_as_json(tmp_path, capsys):
    import json

    from PIL import Image

    from harness.cli import main

    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30)).save(image)
    program = tmp_path / "prog.py"
    program.write_text("final_answer = [image.width, image.height]\n")
    assert main(["exec", str(program), "--image", str(image), "--tools", "none"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "ok" and result["answer"] == [40, 30] and result["isolation"]
    program.write_text("gd_detect(image, 'cup')\n")
    assert main(["exec", str(program), "--image", str(image), "--tools", "none"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "exception" and "NameError" in result["detail"]


def test_private_tmp_is_mounted_before_the_python_installation():
    """A virtual environment under /tmp must stay visible inside bubblewrap."""
    from harness.sandbox.isolation import IsolationPlan, zygote_command

    command = zygote_command(IsolationPlan("bwrap", 0, False), 3, "{}")
    assert command.index("--tmpfs") < command.index("--ro-bind")


def test_the_zygote_outlives_the_thread_that_started_it():
    """bubblewrap kills the sandbox when the thread that started it ends; runs from pool threads must not."""
    from concurrent.futures import ThreadPoolExecutor

    with Sandbox(FAST) as box:
        with ThreadPoolExecutor(1) as pool:  # the first run, and so the start, happens on this pool's thread
            assert pool.submit(box.run, "final_answer = 1").result().answer == 1
        process = box._process  # the pool's thread has ended
        assert box.run("final_answer = 2").answer == 2
        assert box._process is process and process.poll() is None
