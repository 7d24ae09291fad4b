"""Hostile programs, one class of attack per test, at every isolation level this machine offers and,
as root, with layers taken away (each layer must stop its attacks on its own): a program cannot reach
another process, make the parent fail or wait, kill or wedge the zygote, fill memory or disk past its
limits, see a sibling's files, outlive its sample, or (as root) change the host."""

from __future__ import annotations

import os
import resource
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from harness.sandbox.isolation import is_root
from sandbox_support import (
    CHANNEL, FAST, NAME_ITSELF, STRIPPED, Tools, levels, make_sandbox, processes_named, run, run_all,
    wait_until_gone,
)

LEVELS = levels()
VARIANTS = LEVELS + list(STRIPPED)


@pytest.fixture(scope="module", params=VARIANTS)
def sandbox(request):
    with make_sandbox(request.param) as box:
        yield box


@pytest.fixture(scope="module", params=LEVELS)
def full_sandbox(request):
    """Every layer this machine gives (the parent-side checks do not depend on the layers)."""
    with make_sandbox(request.param) as box:
        yield box


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
                found += children
                stack += children
        except OSError:
            pass
    return found


# --------------------------------------------------------------------------- other processes

REACH = """\
import os, fcntl, resource, signal
me = os.getpid()
hits = []
for pid in [p for p in TARGETS + list(range(1, 50)) if p not in (0, me)]:
    for what, act in (("prlimit", lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE)),
                      ("set-prlimit", lambda: resource.prlimit(pid, resource.RLIMIT_CORE,
                                                               resource.prlimit(pid, resource.RLIMIT_CORE))),
                      ("signal", lambda: os.kill(pid, 0)),
                      ("memory", lambda: open(f"/proc/{pid}/mem", "rb").close()),
                      ("renice", lambda: os.setpriority(os.PRIO_PROCESS, pid, 19)),
                      ("affinity", lambda: os.sched_setaffinity(pid, {0}))):
        try:
            act()
            hits.append(f"{what} {pid}")
        except Exception:
            pass
try:
    os.kill(-1, 0)  # any process at all this one may signal
    hits.append("signal -1")
except Exception:
    pass
for target in [t for t in TARGETS if t != me] + [-t for t in TARGETS]:
    r, w = os.pipe()
    try:
        fcntl.fcntl(r, fcntl.F_SETOWN, target)
        owner = fcntl.fcntl(r, fcntl.F_GETOWN)
        fcntl.fcntl(r, fcntl.F_SETSIG, signal.SIGUSR1)
        fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
        os.write(w, b"x")
        if owner not in (0, me, -me):
            hits.append(f"sigio {target}")
    except Exception:
        pass
    for request in (0x8901, 0x8902):  # FIOSETOWN, SIOCSPGRP
        try:
            fcntl.ioctl(r, request, target.to_bytes(4, "little", signed=True))
            if fcntl.fcntl(r, fcntl.F_GETOWN) not in (0, me, -me):
                hits.append(f"ioctl {request:#x} {target}")
        except Exception:
            pass
final_answer = hits
"""


def test_a_program_cannot_reach_any_other_process(sandbox):
    """prlimit64, signals (also through SIGIO ownership), memory, priority and affinity of the harness,
    the zygote, the launcher and a sibling program all fail, whatever their PIDs."""
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append("SIGUSR1"))
    limits = {kind: resource.getrlimit(kind) for kind in (resource.RLIMIT_NOFILE, resource.RLIMIT_CORE)}
    try:
        run(sandbox, "final_answer = 1")
        zygote = sandbox._zygote
        sibling, tools = {}, Tools()
        holder = threading.Thread(target=lambda: sibling.setdefault("r", run(
            sandbox, "wait(image)\nfinal_answer = 'untouched'", tools)))
        holder.start()
        time.sleep(0.5)
        targets = [os.getpid(), os.getppid(), zygote._process.pid, *descendants(zygote._process.pid)]
        result = run(sandbox, REACH.replace("TARGETS", repr(targets)), wall_seconds=20)
        tools.released.set()
        holder.join(10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert result.status == "ok", result.detail
    assert result.answer == []
    assert received == []
    assert {kind: resource.getrlimit(kind) for kind in limits} == limits
    assert sibling["r"].answer == "untouched"
    assert sandbox._zygote is zygote and zygote.alive
    assert run(sandbox, "final_answer = 2").answer == 2


# --------------------------------------------------------------------------- the parent's bounds

FORGED = {
    # name: (program, status, words in the detail)
    "deep nesting": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":' + b'[' * 300000 + b']' * 300000 + b'}')\n"
                     "import time\ntime.sleep(5)", "killed", "protocol"),
    "nesting past the depth limit": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":' + b'[' * 70 + b']' * 70 + b'}')\n"
                                     "import time\ntime.sleep(5)", "killed", "nesting deeper"),
    "huge integer": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":' + b'9' * 5000 + b'}')\nimport time\ntime.sleep(5)",
                     "killed", "digits"),
    "integer past the digit limit": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":' + b'9' * 101 + b'}')\n"
                                     "import time\ntime.sleep(5)", "killed", "digits"),
    "NaN": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":NaN}')\nimport time\ntime.sleep(5)", "killed", "NaN"),
    "infinity": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":[-Infinity]}')\nimport time\ntime.sleep(5)",
                 "killed", "Infinity"),
    "float overflow": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":1e999}')\nimport time\ntime.sleep(5)",
                       "killed", "out of range"),
    "garbage": (CHANNEL + "send(b'\\xff\\xfe{not json')\nimport time\ntime.sleep(5)", "killed", "malformed"),
    "not an object": (CHANNEL + "send(b'[1, 2]')\nimport time\ntime.sleep(5)", "killed", "JSON object"),
    "unknown operation": (CHANNEL + "send(b'{\"op\":\"exited\",\"slot\":0}')\nimport time\ntime.sleep(5)", "killed", "unexpected"),
    "reply instead of call": (CHANNEL + "send(b'{\"result\": 1}')\nimport time\ntime.sleep(5)", "killed", "unexpected"),
    "forged status": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"perfect\",\"answer\":1}')\nimport time\ntime.sleep(5)",
                      "killed", "unknown status"),
    "ok without an answer": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\"}')\nimport time\ntime.sleep(5)",
                             "killed", "without an answer"),
    "typed fields": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":1,\"pytype\":[1]}')\nimport time\ntime.sleep(5)",
                     "killed", "not text"),
    "negative drop count": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":1,\"stdout_dropped\":-5}')\n"
                            "import time\ntime.sleep(5)", "killed", "output"),
    "size past the limit": (CHANNEL + "raw(b'\\xff\\xff\\xff\\xff')\nimport time\ntime.sleep(5)", "killed", "exceeds"),
    "big message": (CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":\"' + b'x' * (3 << 20) + b'\"}')",
                    "killed", "exceeds"),
    "call with a bad shape": (CHANNEL + "send(b'{\"op\":\"call\",\"tool\":[\"echo\"],\"args\":{},\"kwargs\":[]}')\n"
                              "import time\ntime.sleep(1)", None, None),
}


def test_the_parent_turns_any_message_into_a_status(full_sandbox):
    results = run_all(full_sandbox, {name: code for name, (code, _, _) in FORGED.items()}, wall_seconds=8)
    for name, (_, status, words) in FORGED.items():
        result = results[name]
        if status is None:
            continue
        assert result.status == status, (name, result)
        assert words in result.detail, (name, result.detail)
        assert result.seconds < 4, name  # ended when the message arrived, not at the deadline
    bad_call = results["call with a bad shape"]  # answered with an error, recorded
    assert bad_call.status == "no_answer" and bad_call.tool_calls[0]["error"] == "malformed call"


def test_a_forged_result_ends_the_sample_and_its_process(full_sandbox):
    name = b"forger"
    code = (f"NAME = {name!r}\n{NAME_ITSELF}{CHANNEL}"
            "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":7,\"stdout\":\"' + b'y' * 500000 + b'\"}')\n"
            "import time\nwhile True:\n    time.sleep(1)")
    result = run(full_sandbox, code, wall_seconds=30)
    assert result.status == "ok" and result.answer == 7 and result.seconds < 5
    assert len(result.stdout) < 2200 and "more characters of output dropped" in result.stdout
    assert wait_until_gone(name) == []


def test_messages_that_never_finish_end_at_the_deadline(full_sandbox):
    results = run_all(full_sandbox, {
        "byte by byte": CHANNEL + "import time\nraw(b'\\x00\\x00\\x00\\x40')\nwhile True:\n    raw(b' ')\n    time.sleep(0.2)",
        "header only": CHANNEL + "import time\nraw(b'\\x00\\x00')\ntime.sleep(60)",
        "silent": "import time\ntime.sleep(60)",
        "ignores replies": CHANNEL + "import time\nwhile True:\n"
                           "    send(b'{\"op\":\"call\",\"tool\":\"echo\",\"args\":[\"' + b'z' * 1000 + b'\"],\"kwargs\":{}}')",
    }, wall_seconds=2, max_tool_calls=100000, max_recorded_bytes=1 << 30)
    for name, result in results.items():
        assert result.status == "timeout" and "wall-clock" in result.detail, (name, result)
        assert result.seconds < 2 + 1.5, name


def test_tool_calls_are_bounded_in_number_size_time_and_record(full_sandbox):
    results = run_all(full_sandbox, {
        "many calls": "while True:\n    try:\n        echo(image)\n    except ToolError:\n        pass",
        "long string": "try:\n    echo(image, 'x' * 100000)\nexcept ToolError as e:\n    final_answer = str(e)",
        "long phrase list": "try:\n    echo(image, ', '.join(['cup'] * 5000))\nexcept ToolError as e:\n    final_answer = str(e)",
        "long list": "try:\n    echo(image, list(range(10000)))\nexcept ToolError as e:\n    final_answer = str(e)",
        "deep arguments": "a = []\nfor _ in range(100):\n    a = [a]\ntry:\n    echo(image, a)\nexcept ToolError as e:\n"
                          "    final_answer = str(e)",
        "big records": "for i in range(300):\n    echo(image, 'w' * 1500)\nfinal_answer = i",
    }, max_tool_calls=500)
    assert results["many calls"].status == "tool_error" and "more than 500 tool calls" in results["many calls"].detail
    assert len(results["many calls"].tool_calls) == 500
    for name in ("long string", "long phrase list", "long list"):
        assert results[name].status == "ok" and "limit" in results[name].answer, name
        assert "args" not in results[name].tool_calls[0]  # refused arguments are not recorded
    deep = results["deep arguments"]
    assert deep.status == "killed" and "nesting deeper" in deep.detail
    big = results["big records"]
    assert big.status == "ok" and big.answer == 299
    assert sum(len(str(call)) for call in big.tool_calls) < 2 * FAST.max_recorded_bytes
    assert "truncated" in big.tool_calls[-1] and "args" in big.tool_calls[0]


def test_tool_time_has_its_own_budget(full_sandbox):
    tools = Tools(slow_seconds=0.3)
    result = run(full_sandbox, "while True:\n    slow(image)", tools, wall_seconds=30, tool_seconds=1.0)
    assert result.status == "timeout" and "tool time" in result.detail
    assert 1.0 <= result.seconds < 3


# --------------------------------------------------------------------------- the zygote

ZYGOTE_KILLERS = {
    "deep tree": "import os\nfor i in range(3000):\n    try:\n        os.mkdir('d')\n        os.chdir('d')\n"
                 "    except OSError:\n        break\nfinal_answer = i",
    "deleted workspace": "import os\nhere = os.getcwd()\nfor name in os.listdir(here):\n    os.remove(name)\n"
                         "os.chdir('/')\ntry:\n    os.rmdir(here)\nexcept OSError:\n    pass\nfinal_answer = 1",
    "locked workspace": "import os\nos.mkdir('x')\nopen('x/f', 'w').write('1')\nos.chmod('x', 0)\nos.chmod('.', 0)\n"
                        "final_answer = 1",
    "full disk": "import os\ntotal = 0\ntry:\n    for i in range(10000):\n        with open(f'f{i}', 'wb') as f:\n"
                 "            for _ in range(64):\n                f.write(b'0' * 65536)\n                total += 65536\n"
                 "except OSError:\n    pass\nfinal_answer = total",
    "many files": "import os\ncount = 0\ntry:\n    while True:\n        open(f'n{count}', 'w').close()\n        count += 1\n"
                  "except OSError:\n    pass\nfinal_answer = count",
    "descriptors": "import os\nfds = []\ntry:\n    while True:\n        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
                   "except OSError:\n    pass\nfinal_answer = len(fds)",
    "symlink out": "import os\nos.symlink('/', 'root')\nos.symlink('..', 'up')\nfinal_answer = 1",
}


def test_the_zygote_survives_what_a_program_does_to_its_workspace(sandbox):
    run(sandbox, "final_answer = 0")
    zygote = sandbox._zygote
    results = run_all(sandbox, ZYGOTE_KILLERS, wall_seconds=20)
    for name, result in results.items():
        assert result.status in ("ok", "exception"), (name, result)
    assert (results["full disk"].answer or 0) <= FAST.file_mb << 20  # capped in total (or read-only)
    assert run(sandbox, "import os\nfinal_answer = sorted(os.listdir('.'))").answer == []  # a fresh workspace
    assert sandbox._zygote is zygote and zygote.alive


# --------------------------------------------------------------------------- storage and siblings

def test_storage_is_capped_and_outside_writes_fail(sandbox):
    results = run_all(sandbox, {
        "one big file": "f = open('big', 'wb')\nfor _ in range(64):\n    f.write(b'0' * (1 << 20))\nfinal_answer = 1",
        "tmp": "open('/tmp/spill', 'w').write('x')\nfinal_answer = 1",
        "shm": "open('/dev/shm/spill', 'w').write('x')\nfinal_answer = 1",
        "memory file": "import os\nfd = os.memfd_create('spill')\nos.write(fd, b'0' * (1 << 20))\nfinal_answer = 1",
        "parent folder": "import os\nopen(os.path.join(os.path.dirname(os.getcwd()), 'spill'), 'w').write('x')\n"
                         "final_answer = 1",
    })
    assert results["one big file"].status == "exception"  # File too large, or no space left
    assert not Path("/tmp/spill").exists() and not Path("/dev/shm/spill").exists()
    for name in ("tmp", "shm", "parent folder"):
        assert results[name].status == "exception", name
    if "seccomp" in sandbox.isolation:
        assert results["memory file"].status == "exception"


def test_a_program_cannot_see_a_siblings_files(sandbox):
    tools = Tools()
    writer = ("open('secret.txt', 'w').write('sibling-secret-42')\nimport os\nfinal_answer = os.getcwd()\n"
              "wait(image)")
    # The walk is bounded (a /proc of a busy CI host is vast); /proc is attacked directly instead, through
    # every process's cwd and root links, which is where a sibling's workspace would show.
    searcher = """\
import glob, os
found, budget = [], [4000]
def read(path):
    try:
        if 'sibling-secret-42' in open(path, errors='ignore').read(100):
            found.append(path)
    except OSError:
        pass
def look(root, depth):
    if depth > 6 or budget[0] <= 0:
        return
    try:
        entries = os.listdir(root)
    except OSError:
        return
    for entry in entries:
        budget[0] -= 1
        path = os.path.join(root, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            look(path, depth + 1)
        else:
            read(path)
for start in ('/tmp', os.path.dirname(os.getcwd()), '/run', '/dev/shm', '/var/tmp'):
    look(start, 0)
for link in glob.glob('/proc/[0-9]*/cwd') + glob.glob('/proc/[0-9]*/root'):
    read(os.path.join(link, 'secret.txt'))
    try:
        for entry in os.listdir(link)[:50]:
            read(os.path.join(link, entry))
    except OSError:
        pass
release(image)
final_answer = found
"""
    results = run_all(sandbox, {"writer": writer, "searcher": searcher}, tools, wall_seconds=20)
    # Without a mount namespace the workspace is read-only: nothing to find either.
    assert results["writer"].status == ("ok" if "mount-namespace" in sandbox.isolation else "exception")
    assert results["searcher"].status == "ok" and results["searcher"].answer == []


def test_no_process_outlives_its_sample(sandbox):
    """A program that starts processes (where the layers let it) and one that keeps running after
    sending its result leave nothing behind."""
    name, child = b"outliver", b"outliver-kid"
    code = (f"NAME = {name!r}\n{NAME_ITSELF}import os, time\n"
            "try:\n    pid = os.fork()\nexcept OSError:\n    pid = -1\n"
            f"if pid == 0:\n    NAME = {child!r}\n{NAME_ITSELF.replace(chr(10), chr(10) + '    ').rstrip()}\n"
            "    while True:\n        time.sleep(1)\n"
            "final_answer = pid")
    result = run(sandbox, code)
    assert result.status in ("ok", "exception")
    assert wait_until_gone(name) == [] and wait_until_gone(child) == []


# --------------------------------------------------------------------------- the host, as root

HOST = """\
import os, time, socket, ctypes
libc = ctypes.CDLL(None, use_errno=True)
done = []
def attempt(name, action):
    try:
        result = action()
        if result is None or result == 0:
            done.append(name)
    except Exception:
        pass
attempt("chmod", lambda: os.chmod(TARGET, 0o777))
attempt("chown", lambda: os.chown(TARGET, 12345, 12345))
attempt("utime", lambda: os.utime(TARGET, (0, 0)))
attempt("python chmod", lambda: os.chmod(PYTHON, 0o777))
attempt("clock", lambda: time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME)))
attempt("hostname", lambda: socket.sethostname(socket.gethostname()))
attempt("syslog", lambda: 0 if libc.klogctl(10, None, 0) >= 0 else 1)
attempt("realtime", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
attempt("fanotify", lambda: 0 if libc.fanotify_init(0, 0) >= 0 else 1)
attempt("mknod", lambda: os.mknod('dev', 0o600 | 0o020000, os.makedev(1, 3)))
attempt("setuid", lambda: os.setuid(0))
attempt("mount", lambda: 0 if libc.mount(b"none", b".", b"tmpfs", 0, None) == 0 else 1)
final_answer = done
"""


@pytest.mark.skipif(not is_root(), reason="what root without bubblewrap must not do")
def test_as_root_a_program_cannot_change_the_host(sandbox, tmp_path):
    tmp_path.chmod(0o755)
    target = tmp_path / "host-file"
    target.write_text("host")
    target.chmod(0o644)
    before = target.stat()
    hostname = socket.gethostname()
    import sys
    python = Path(sys.executable).resolve()
    python_mode = python.stat().st_mode
    code = HOST.replace("TARGET", repr(str(target))).replace("PYTHON", repr(str(python)))
    result = run(sandbox, code)
    assert result.status == "ok", result.detail
    assert result.answer == []
    after = target.stat()
    assert (after.st_mode, after.st_uid, after.st_mtime) == (before.st_mode, before.st_uid, before.st_mtime)
    assert python.stat().st_mode == python_mode and socket.gethostname() == hostname
    assert stat.S_IMODE(after.st_mode) == 0o644
