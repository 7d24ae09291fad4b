"""Everything a run needs, fetched into a data directory for a machine without internet
(``python -m harness download``).

What to fetch comes from the same requirements the preflight checks
(:func:`harness.preflight.run_requirements`): the tasks' dataset repositories
(each once, with the union of the tasks' allow-patterns) and the images they
read from elsewhere where each row says where to fetch it, the model weights
the system's backends and tools name, and under the paper protocol the
original's pinned files. Everything lands under ``DATA_DIR`` in the layout a
run reads with ``--data-dir DATA_DIR`` (``DATA_DIR/<hub id>/...``), so a GPU
node runs offline with ``HF_HUB_OFFLINE=1``.

Every hub file is checked against the hub's own hashes (sha256 for large files,
the git blob hash for the others); a file that does not match is fetched again
once, then reported. Running the command again fetches only what is missing or
wrong (hashes of files already verified are remembered per folder, by size and
modification time). A detector checkpoint in the original format is converted
in place once downloaded, so the run loads it without the conversion model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tqdm import tqdm

from harness.requirements import HubRepo, ImageFolder, Requirement, UpstreamFile
from harness.types import UrlImage
from harness.upstream import OFFLINE_VARIABLES, AssetStore, UpstreamAssetError, UpstreamPin, offline

log = logging.getLogger(__name__)

VERIFIED_FILE = ".harness-verified.json"  # per folder: path -> [size, mtime_ns, hash] of files already checked


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repository as the hub describes it."""

    path: str
    size: int
    sha256: str | None = None  # large (LFS) files
    blob_id: str | None = None  # the git blob hash of small files


@dataclass
class Outcome:
    """What the download did, item by item, for the summary."""

    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.manual


# --------------------------------------------------------------------------- hub access (replaceable in tests)


def hub_files(repo: HubRepo) -> list[RemoteFile]:
    """The repository's files at its revision that its allow-patterns select, with the hub's hashes."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    entries = [entry for entry in HfApi().list_repo_tree(repo.repo_id, recursive=True, revision=repo.revision,
                                                           repo_type=repo.repo_type)
               if hasattr(entry, "blob_id") and hasattr(entry, "size")]
    selected = set(filter_repo_objects([e.path for e in entries], allow_patterns=list(repo.allow_patterns or ()) or None))
    return [RemoteFile(e.path, int(e.size or 0), getattr(e.lfs, "sha256", None) if e.lfs else None, e.blob_id)
            for e in entries if e.path in selected]


def fetch_repository(repo: HubRepo, target: Path, paths: Sequence[str]) -> None:
    """Fetch ``paths`` of the repository into ``target`` (resumable: huggingface_hub keeps partial files)."""
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo.repo_id, repo_type=repo.repo_type, revision=repo.revision,
                      allow_patterns=list(paths), local_dir=str(target))


class Hub:
    """How the hub is reached: what a repository holds, and how its files are fetched (tests
    replace it with a folder of repositories)."""

    def files(self, repo: HubRepo) -> list[RemoteFile]:
        return hub_files(repo)

    def fetch(self, repo: HubRepo, target: Path, paths: Sequence[str]) -> None:
        fetch_repository(repo, target, paths)


class DownloadError(RuntimeError):
    """A download that cannot start; the message says why."""


# --------------------------------------------------------------------------- hashes


def git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class VerifiedFiles:
    """The files of one folder whose hashes were checked, so a second download does not hash
    gigabytes again: a file counts as verified while its size and modification time are the same."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / VERIFIED_FILE
        try:
            self.entries: dict[str, list[Any]] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}

    def matches(self, local: Path, relative: str, expected: str) -> bool:
        """Whether ``local`` holds content with the hash ``expected`` (hashing it unless remembered)."""
        stat = local.stat()
        seen = self.entries.get(relative)
        if seen and seen[0] == stat.st_size and seen[1] == stat.st_mtime_ns and seen[2] == expected:
            return True
        actual = file_sha256(local) if len(expected) == 64 else git_blob_sha1(local)
        if actual == expected:
            self.entries[relative] = [stat.st_size, stat.st_mtime_ns, expected]
            return True
        return False

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.entries, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)


def _bad_files(folder: Path, files: Sequence[RemoteFile], verified: VerifiedFiles) -> list[str]:
    """The files missing from ``folder`` or not matching the hub's hash."""
    bad = []
    for remote in tqdm(files, desc=f"verifying {folder.name}", unit="file", disable=None, leave=False):
        local = folder / remote.path
        expected = remote.sha256 or remote.blob_id
        if not local.is_file() or (expected and not verified.matches(local, remote.path, expected)):
            bad.append(remote.path)
    return bad


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# --------------------------------------------------------------------------- the parts


def download_repository(repo: HubRepo, data_dir: Path, hub: Hub, outcome: Outcome) -> None:
    """One repository into ``DATA_DIR/<id>``: list, fetch what is missing or wrong, verify every file."""
    target = data_dir / repo.repo_id
    name = f"{repo.what} ({repo.purpose})"
    try:
        files = hub.files(repo)
    except Exception as exc:
        outcome.failed.append(f"{name}: cannot list its files on the hub: {type(exc).__name__}: {exc}")
        return
    if not files:
        outcome.failed.append(f"{name}: the hub lists no file matching {', '.join(repo.allow_patterns or ['*'])}")
        return
    target.mkdir(parents=True, exist_ok=True)
    verified = VerifiedFiles(target)
    missing = _bad_files(target, files, verified)
    if not missing:
        outcome.present.append(f"{name}: {len(files)} files, {human_size(sum(f.size for f in files))}, verified")
        verified.save()
        return
    size = sum(f.size for f in files if f.path in set(missing))
    print(f"{repo.what}: fetching {len(missing)} of {len(files)} files ({human_size(size)}) into {target}", flush=True)
    for attempt in (1, 2):
        for path in missing:  # a present file with the wrong hash is fetched again, not trusted
            (target / path).unlink(missing_ok=True)
        try:
            hub.fetch(repo, target, missing)
        except Exception as exc:
            outcome.failed.append(f"{name}: the download failed: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}; run again to resume")
            verified.save()
            return
        missing = _bad_files(target, files, verified)
        verified.save()
        if not missing:
            outcome.fetched.append(f"{name}: {len(files)} files, {human_size(sum(f.size for f in files))}, verified")
            return
    outcome.failed.append(f"{name}: {len(missing)} files do not match the hub's hashes after two downloads: "
                          f"{', '.join(missing[:5])}")


def convert_in_place(folder: Path, original_config: str) -> Path:
    """Convert the one original-format ``.pth`` of a detector copy into transformers files beside it
    (config and weights last, so a killed conversion never leaves a folder that looks converted)."""
    from harness.tools.convert import convert_detector

    originals = sorted(folder.glob("*.pth"))
    if len(originals) != 1:
        raise ValueError(f"{folder}: expected one original-format .pth to convert, found {len(originals)}")
    for stale in folder.glob(".converting-*"):  # left by a conversion that was killed
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".converting-") as scratch:
        convert_detector(originals[0], Path(scratch) / "out", original_config)
        produced = sorted((Path(scratch) / "out").iterdir(), key=lambda p: p.name in ("config.json",))
        for path in produced:  # config.json moves last: its presence says the conversion is whole
            os.replace(path, folder / path.name)
    return folder


def convert_detectors(requirements: Sequence[Requirement], data_dir: Path, outcome: Outcome) -> None:
    """Convert every downloaded detector checkpoint that is in the original format."""
    originals = {r.option[:-1]: r for r in requirements
                 if isinstance(r, HubRepo) and r.option[-1:] == ("original_config",)}
    for requirement in requirements:
        if not (isinstance(requirement, HubRepo) and requirement.needs == "config.json"):
            continue
        folder = data_dir / requirement.repo_id
        if not folder.is_dir() or (folder / "config.json").is_file():
            continue
        architecture = originals.get(requirement.option[:-1])
        source = architecture.repo_id if architecture else None
        if architecture and (data_dir / architecture.repo_id).is_dir():
            source = str(data_dir / architecture.repo_id)
        if source is None:
            outcome.failed.append(f"{requirement.what}: no transformers config and no architecture to convert it into")
            continue
        print(f"{requirement.what}: converting the original-format checkpoint in {folder}", flush=True)
        try:
            convert_in_place(folder, source)
        except Exception as exc:
            outcome.failed.append(f"{requirement.what}: the conversion failed: {type(exc).__name__}: {exc}")
            continue
        outcome.fetched.append(f"{requirement.what}: converted for transformers in place")


def download_upstream(pin: UpstreamPin | None, data_dir: Path, outcome: Outcome) -> None:
    """Every pinned file of the original code into ``DATA_DIR/<repo>/<path>``, hash-checked."""
    store = AssetStore(pin=pin, data_dir=data_dir)
    for asset in store.pin.assets:
        name = f"upstream file {store.pin.repo}/{asset.path} ({asset.purpose})"
        kind, _ = store.status(asset.path)
        if kind == "offline":
            outcome.present.append(f"{name}: sha256 verified")
            continue
        target = store.offline_path(asset.path)
        try:
            data = AssetStore(pin=store.pin, data_dir=None, cache_dir=store.cache_dir).read_bytes(asset.path)
        except UpstreamAssetError as exc:
            outcome.failed.append(f"{name}: {str(exc).split(';')[0]}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        os.replace(partial, target)
        outcome.fetched.append(f"{name}: {len(data)} bytes, sha256 verified")


def _fetch_image(url: str, target: Path, timeout_s: float) -> str | None:
    """Download one image to ``target``; None on success, else why not."""
    from PIL import Image

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read()
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # a proxy's error page or a cut-off file is not an image
    except Exception as exc:
        return f"{url}: {type(exc).__name__}: {exc}"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return None


def download_images(task: str, images: Iterable[Any], outcome: Outcome, jobs: int = 8,
                    timeout_s: float = 30.0) -> None:
    """The images of a task's samples that name where to fetch them and are not local yet."""
    wanted = {}
    for image in images:
        if isinstance(image, UrlImage) and image.local_path and not Path(image.local_path).is_file():
            wanted.setdefault(image.local_path, image.url)
    if not wanted:
        outcome.present.append(f"images of task {task}: all local")
        return
    failures = []
    with ThreadPoolExecutor(jobs, thread_name_prefix="images") as pool, \
            tqdm(total=len(wanted), desc=f"images of {task}", unit="image", disable=None) as progress:
        for error in pool.map(lambda item: _fetch_image(item[1], Path(item[0]), timeout_s), wanted.items()):
            progress.update()
            if error:
                failures.append(error)
    if failures:
        outcome.failed.append(f"images of task {task}: {len(failures)} of {len(wanted)} failed (run again to retry); "
                              f"the first: {failures[0]}")
    else:
        outcome.fetched.append(f"images of task {task}: {len(wanted)} downloaded")


# --------------------------------------------------------------------------- the whole download


def download(requirements: Sequence[Requirement], data_dir: Path, task_images: Callable[[str], Iterable[Any]],
             *, upstream: bool = False, pin: UpstreamPin | None = None, hub: Hub | None = None,
             jobs: int = 8) -> Outcome:
    """Fetch what ``requirements`` name into ``data_dir``. ``task_images(task)`` gives the image
    references of a task's samples (read from the copy just made), for images fetched per row."""
    if offline():
        variables = " and ".join(f"${name}" for name in OFFLINE_VARIABLES)
        raise DownloadError(f"downloads are off ({variables}); run `download` where there is internet, "
                            f"without them set")
    hub = hub or Hub()
    outcome = Outcome()
    data_dir.mkdir(parents=True, exist_ok=True)
    repos = _merged_repositories(requirements)
    for repo in repos:
        download_repository(repo, data_dir, hub, outcome)
    convert_detectors(requirements, data_dir, outcome)
    if upstream or any(isinstance(r, UpstreamFile) for r in requirements):
        download_upstream(pin, data_dir, outcome)
    for requirement in requirements:
        if not isinstance(requirement, ImageFolder):
            continue
        task = requirement.task
        if requirement.optional:  # each row names its image's address
            try:
                download_images(task, task_images(task), outcome, jobs)
            except Exception as exc:
                outcome.failed.append(f"images of task {task}: cannot read the task's rows: {exc}")
        elif not Path(requirement.folder).is_dir() or not any(Path(requirement.folder).iterdir()):
            outcome.manual.append(f"images of task {task}: not fetchable here; {requirement.fix}")
        else:
            outcome.present.append(f"images of task {task}: in {requirement.folder}")
    return outcome


def _merged_repositories(requirements: Sequence[Requirement]) -> list[HubRepo]:
    """Each hub repository once: tasks reading one repository share a copy holding the union of their
    files (a task reading all of it makes the copy whole)."""
    merged: dict[tuple[str, str], HubRepo] = {}
    for requirement in requirements:
        if not isinstance(requirement, HubRepo):
            continue
        key = (requirement.repo_type, requirement.repo_id)
        before = merged.get(key)
        if before is None:
            merged[key] = requirement
            continue
        if before.revision != requirement.revision:
            raise ValueError(f"{requirement.repo_id} is needed at two revisions ({before.revision} for "
                             f"{before.purpose}, {requirement.revision} for {requirement.purpose}); one folder under "
                             f"the data directory holds one revision")
        patterns = None if before.allow_patterns is None or requirement.allow_patterns is None else \
            tuple(dict.fromkeys([*before.allow_patterns, *requirement.allow_patterns]))
        merged[key] = HubRepo(before.repo_id, before.repo_type, before.revision, patterns,
                              f"{before.purpose}; {requirement.purpose}", before.option, before.revision_option,
                              before.needs or requirement.needs)
    return list(merged.values())
