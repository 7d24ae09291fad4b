"""What a run needs from the machine, declared by the things that need it, and checked
before any sample or paid call.

Each system kind, chat backend, tool backend, task and judge returns the
:class:`Requirement` objects it needs (a package, a GPU, an API key variable,
an endpoint, a hub repository, an upstream file, a folder of images); the
preflight (:mod:`harness.preflight`) checks them all and names every missing
one with its fix; ``python -m harness doctor`` prints them as a checklist and
``python -m harness download`` fetches the hub repositories and upstream files
among them. A check never downloads a model or a dataset; it looks in the data
directory, in the Hugging Face cache, and (when downloads are allowed) asks
the hub whether the repository exists and can be read.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import importlib.util
import ipaddress
import os
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.upstream import OFFLINE_VARIABLES, AssetStore, UpstreamAssetError, offline

OK, MISSING, WARNING = "ok", "missing", "warning"


@dataclass(frozen=True)
class Check:
    """The outcome of checking one requirement."""

    status: str  # ok | missing | warning (works, but not as the paper ran it, or slowly)
    what: str  # "package vllm", "$OPENAI_API_KEY"
    purpose: str  # who needs it: "the vllm backend of the program writer"
    detail: str = ""  # where it was found, or what is wrong
    fix: str = ""  # the exact command or setting that provides it

    @property
    def ok(self) -> bool:
        return self.status != MISSING


@dataclass
class CheckContext:
    """Where the checks look: the run's data directory, and whether downloads are allowed."""

    data_dir: Path | None = None
    timeout_s: float = 5.0
    offline: bool = field(default_factory=offline)
    download_args: str = ""  # the `download` arguments of the run being checked (" --system S --tasks T")
    devices_here: bool = True  # False: the models run elsewhere (Ray replicas), so no GPU is needed here

    def download_fix(self, own_args: str = "") -> str:
        return DOWNLOAD_FIX.format(args=self.download_args or own_args)

    def local_copy(self, repo_id: str) -> Path | None:
        if self.data_dir is None:
            return None
        folder = self.data_dir / repo_id
        return folder if folder.is_dir() and any(folder.iterdir()) else None


DOWNLOAD_FIX = ("run `python -m harness download{args} --data-dir DIR` on a machine with internet, then pass "
                "--data-dir DIR here")


class Requirement:
    """One thing a run needs; ``key`` identifies it so that two declarations of it are checked once."""

    purpose: str

    @property
    def key(self) -> str:
        raise NotImplementedError

    def check(self, context: CheckContext) -> Check:
        raise NotImplementedError


@dataclass(frozen=True)
class Package(Requirement):
    module: str  # importable name: "vllm", "google.genai"
    install: str  # the exact command: 'pip install -e ".[vllm]"'
    purpose: str = ""

    @property
    def key(self) -> str:
        return f"package:{self.module}"

    def check(self, context: CheckContext) -> Check:
        what = f"package {self.module}"
        try:
            found = importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a broken install
            found = False
        if found:
            return Check(OK, what, self.purpose)
        return Check(MISSING, what, self.purpose, "not installed", self.install)


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    """CUDA devices torch sees (0 without torch or without a GPU)."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Gpu(Requirement):
    purpose: str = ""
    required: bool = True  # False: works on the CPU, only slowly (a warning)

    @property
    def key(self) -> str:
        return f"gpu:{self.required}"

    def check(self, context: CheckContext) -> Check:
        if not context.devices_here:
            return Check(OK, "a CUDA GPU", self.purpose, "wanted by the replicas, not here (Ray places them)")
        count = gpu_count()
        if count:
            return Check(OK, "a CUDA GPU", self.purpose, f"{count} visible")
        if self.required:
            return Check(MISSING, "a CUDA GPU", self.purpose, "torch sees no CUDA device",
                         "run on a machine with an NVIDIA GPU and a CUDA build of torch")
        return Check(WARNING, "a CUDA GPU", self.purpose, "none: the models run on the CPU, slowly",
                     "run on a machine with a GPU for real speed")


@dataclass(frozen=True)
class EnvVar(Requirement):
    """One of ``names`` must be set (non-empty)."""

    names: tuple[str, ...]
    purpose: str = ""
    fix: str = ""

    @property
    def key(self) -> str:
        return "env:" + "|".join(self.names)

    def check(self, context: CheckContext) -> Check:
        what = " or ".join(f"${name}" for name in self.names)
        found = [name for name in self.names if os.environ.get(name, "").strip()]
        if found:
            return Check(OK, what, self.purpose, f"${found[0]} is set")
        return Check(MISSING, what, self.purpose, "not set", self.fix or f"export {self.names[0]}=...")


def _local_host(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified  # 127.0.0.1, ::1, 0.0.0.0


def is_local_url(url: str | None) -> bool:
    """Whether an endpoint is on this machine (a local server takes any API key)."""
    return bool(url) and _local_host(urllib.parse.urlsplit(str(url)).hostname or "")


@dataclass(frozen=True)
class Endpoint(Requirement):
    """A server that must accept connections (through the proxy the environment names, if any)."""

    url: str
    purpose: str = ""
    fix: str = ""

    @property
    def key(self) -> str:
        return f"endpoint:{self.url}"

    def check(self, context: CheckContext) -> Check:
        what = f"endpoint {self.url}"
        parts = urllib.parse.urlsplit(self.url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        proxy = None
        if not urllib.request.proxy_bypass(host):
            proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy:
            proxy_parts = urllib.parse.urlsplit(proxy if "//" in proxy else f"http://{proxy}")
            host, port = proxy_parts.hostname or "", proxy_parts.port or 80
        try:
            with socket.create_connection((host, port), timeout=context.timeout_s):
                pass
        except OSError as exc:
            via = f" through the proxy {proxy}" if proxy else ""
            return Check(MISSING, what, self.purpose, f"cannot connect{via}: {exc.strerror or exc}",
                         self.fix or "start the server, or check the URL, the network and any proxy settings")
        return Check(OK, what, self.purpose, "accepts connections" + (f" (via {proxy})" if proxy else ""))


@functools.lru_cache(maxsize=None)
def _hub_info(repo_id: str, repo_type: str, revision: str | None, timeout_s: float) -> str | None:
    """None when the hub serves the repository at the revision, else why not."""
    try:
        from huggingface_hub import HfApi

        HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=timeout_s)
    except Exception as exc:
        name = type(exc).__name__
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "Gated" in name:
            return f"gated: accept its terms on the hub and set $HF_TOKEN ({text})"
        return f"{name}: {text}"
    return None


def _cached_snapshot(repo_id: str, repo_type: str, revision: str | None,
                     allow_patterns: Sequence[str] | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, repo_type=repo_type, revision=revision,
                                      allow_patterns=list(allow_patterns) if allow_patterns else None,
                                      local_files_only=True))
    except Exception:  # not in the cache (or an unreadable cache): the other places decide
        return None


def _missing_patterns(folder: Path, patterns: Sequence[str] | None) -> list[str]:
    """The allow-patterns no file of a local copy matches (a partial copy that lacks a part)."""
    if not patterns:
        return []
    names = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
    return [p for p in patterns if not any(fnmatch.fnmatch(name, p) for name in names)]


@dataclass(frozen=True)
class HubRepo(Requirement):
    """A dataset or model repository of the Hugging Face hub, as a run reads it: a copy under the
    data directory (``DATA_DIR/<repo id>``), the Hugging Face cache, or the hub itself.

    ``option`` is where the repository is named in its owner's options (``("detector",
    "checkpoint")``): a run with a data directory that holds a copy reads that copy instead
    (:func:`localized`). ``needs`` names a file the copy must hold to be usable
    (``config.json`` of a converted detector)."""

    repo_id: str
    repo_type: str = "model"  # model | dataset
    revision: str | None = None
    allow_patterns: tuple[str, ...] | None = None
    purpose: str = ""
    option: tuple[str, ...] = ()
    revision_option: tuple[str, ...] = ()
    needs: str | None = None
    needs_fix: str = ""
    download_args: str = ""  # the `download` arguments that fetch it, for the fix

    @property
    def key(self) -> str:  # two tasks reading different parts of one repository are two requirements
        return f"hub:{self.repo_type}:{self.repo_id}@{self.revision}:{self.allow_patterns}"

    @property
    def what(self) -> str:
        at = f" @ {self.revision[:12]}" if self.revision else ""
        return f"{self.repo_type} {self.repo_id}{at}"

    def check(self, context: CheckContext) -> Check:
        fix = context.download_fix(self.download_args)
        local = context.local_copy(self.repo_id)
        if local is not None:
            # A dataset copy needs every part its task reads; a model's patterns only limit the download.
            wanted = [p for p in self.allow_patterns or () if p != "README.md"] if self.repo_type == "dataset" else []
            lacking = _missing_patterns(local, wanted)
            if lacking:
                return Check(MISSING, self.what, self.purpose, f"the copy at {local} has no file matching "
                             f"{', '.join(lacking)}", fix)
            if self.needs and not (local / self.needs).is_file():
                return Check(MISSING, self.what, self.purpose, f"the copy at {local} has no {self.needs}",
                             self.needs_fix or fix)
            return Check(OK, self.what, self.purpose, f"local copy at {local}")
        cached = _cached_snapshot(self.repo_id, self.repo_type, self.revision, self.allow_patterns)
        if cached is not None:
            return Check(OK, self.what, self.purpose, f"in the Hugging Face cache ({cached})")
        where = f"not in {context.data_dir}" if context.data_dir else "no --data-dir"
        if context.offline:
            variables = " or ".join(f"${v}" for v in OFFLINE_VARIABLES)
            return Check(MISSING, self.what, self.purpose,
                         f"{where}, not in the Hugging Face cache, and downloads are off ({variables})", fix)
        problem = _hub_info(self.repo_id, self.repo_type, self.revision, context.timeout_s)
        if problem is not None:
            return Check(MISSING, self.what, self.purpose, f"{where}, not cached, and the hub says: {problem}", fix)
        return Check(OK, self.what, self.purpose, "on the hub (downloaded on first use)")


@dataclass(frozen=True)
class UpstreamFile(Requirement):
    """A pinned file of the original code (:mod:`harness.upstream`)."""

    path: str
    purpose: str = ""

    @property
    def key(self) -> str:
        return f"upstream:{self.path}"

    def check(self, context: CheckContext) -> Check:
        store = AssetStore(data_dir=context.data_dir)
        what = f"upstream file {store.pin.repo}/{self.path}"
        kind, path = store.status(self.path)
        if path is not None:
            return Check(OK, what, self.purpose, f"{kind} copy at {path}, sha256 verified")
        if context.offline:
            where = store.offline_path(self.path) or "no --data-dir"
            return Check(MISSING, what, self.purpose, f"not at {where} nor in the cache, and downloads are off",
                         context.download_fix(" --protocol paper"))
        try:
            path = store.path(self.path)  # small text files: fetching one now is the surest check
        except UpstreamAssetError as exc:
            return Check(MISSING, what, self.purpose, str(exc).split(";")[0],
                         context.download_fix(" --protocol paper"))
        return Check(OK, what, self.purpose, f"downloaded to {path}, sha256 verified")


@dataclass(frozen=True)
class LocalPath(Requirement):
    path: str
    purpose: str = ""
    fix: str = ""
    folder: bool = False

    @property
    def key(self) -> str:
        return f"path:{self.path}"

    def check(self, context: CheckContext) -> Check:
        path = Path(self.path)
        ok = path.is_dir() if self.folder else path.is_file()
        what = f"{'folder' if self.folder else 'file'} {self.path}"
        if ok:
            return Check(OK, what, self.purpose)
        return Check(MISSING, what, self.purpose, "does not exist", self.fix)


@dataclass(frozen=True)
class ImageFolder(Requirement):
    """Image files a task reads from a folder that its dataset repository does not hold."""

    folder: str
    purpose: str = ""
    fix: str = ""
    optional: bool = False  # True: each row names where to fetch its image (downloaded on first use: a warning)
    task: str = ""

    @property
    def key(self) -> str:
        return f"images:{self.folder}"

    def check(self, context: CheckContext) -> Check:
        folder = Path(self.folder)
        what = f"images in {folder}"
        count = sum(1 for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0
        if count:
            return Check(OK, what, self.purpose, f"{count} files")
        if self.optional and not context.offline:
            return Check(WARNING, what, self.purpose, "none yet: each image is downloaded on first use",
                         self.fix)
        return Check(MISSING, what, self.purpose, "no image files there", self.fix)


@dataclass(frozen=True)
class Isolation(Requirement):
    """The sandbox's isolation mode, as a system file asks for it (``auto`` always works)."""

    mode: str = "auto"
    purpose: str = ""

    @property
    def key(self) -> str:
        return f"isolation:{self.mode}"

    def check(self, context: CheckContext) -> Check:
        from harness.sandbox.isolation import IsolationError, plan_isolation

        what = f"sandbox isolation ({self.mode})"
        try:
            plan = plan_isolation(self.mode)
        except IsolationError as exc:
            return Check(MISSING, what, self.purpose, str(exc), "install the layer, or set isolation: auto")
        detail = "layers: " + ", ".join(plan.layers)
        if plan.launcher == "process":
            return Check(WARNING, what, self.purpose, detail + " (no namespaces: programs can reach the network)",
                         "apt install bubblewrap")
        return Check(OK, what, self.purpose, detail)


def unique(requirements: Iterable[Requirement]) -> list[Requirement]:
    """Each requirement once (the first declaration wins), in order."""
    seen: dict[str, Requirement] = {}
    for requirement in requirements:
        seen.setdefault(requirement.key, requirement)
    return list(seen.values())


def _get(options: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        options = options.get(part) if isinstance(options, dict) else None
    return options


def _set(options: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = options
    for part in path[:-1]:
        target = target.setdefault(part, {}) if isinstance(target.get(part, {}), dict) else {}
    target[path[-1]] = value


def localized(options: dict[str, Any], requirements: Iterable[Requirement], data_dir: Path | None) -> dict[str, Any]:
    """A copy of ``options`` with every hub repository it names (each :class:`HubRepo` with an ``option``)
    replaced by its copy under ``data_dir``, where there is one, and that repository's revision
    option cleared (a local copy is one revision)."""
    if data_dir is None:
        return options
    options = copy.deepcopy(options)
    context = CheckContext(data_dir=data_dir)
    for requirement in requirements:
        if isinstance(requirement, HubRepo) and requirement.option:
            local = context.local_copy(requirement.repo_id)
            if local is not None:
                _set(options, requirement.option, str(local))
                if requirement.revision_option and _get(options, requirement.revision_option) is not None:
                    _set(options, requirement.revision_option, None)
    return options
