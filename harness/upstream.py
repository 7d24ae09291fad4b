"""Files of the original VALOR code, fetched at run time from a pinned commit, never stored here.

The paper protocol needs the original program-writer prompt, the GQA judge's
prompt, the VQA tool's base prompts, the verifier prompts and the training
questions. Their text belongs to the original project, so this repository
holds only where each file lives, its sha256 and its size. A file is looked
for, in order:

1. an offline copy: ``DATA_DIR/damianomarsili/VALOR/<path>`` (a checkout of the
   repository at the pinned commit, as GPU nodes without internet need);
2. the cache: ``CACHE_DIR/upstream/<commit>/<path>``;
3. a download of ``<path>`` at the pinned commit (never when ``HF_HUB_OFFLINE``
   or ``HARNESS_OFFLINE`` is set), stored in the cache.

Every copy is checked against the pinned sha256 before use; a missing or
different file is an :class:`UpstreamAssetError` naming the file, the
expected hash and the ways to provide it.

Some texts live inside Python files (the judge prompt in ``check_synonyms``,
the VQA prompts in ``vqa``); they are read with :mod:`ast`, never retyped.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HARNESS_OFFLINE")
_TRUE = ("1", "true", "True", "TRUE", "yes", "YES", "on")


class UpstreamAssetError(RuntimeError):
    """An upstream file that cannot be found, fetched or trusted; the message says how to provide it."""


@dataclass(frozen=True)
class UpstreamAsset:
    path: str  # inside the repository
    sha256: str
    size: int
    purpose: str


@dataclass(frozen=True)
class UpstreamPin:
    """A repository at one commit and the files of it that the harness may read."""

    repo: str
    commit: str
    assets: tuple[UpstreamAsset, ...]
    url_template: str = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"

    def asset(self, path: str) -> UpstreamAsset:
        for asset in self.assets:
            if asset.path == path:
                return asset
        raise KeyError(f"{path} is not a pinned file of {self.repo}@{self.commit[:7]}; pinned: "
                       + ", ".join(a.path for a in self.assets))

    def url(self, path: str) -> str:
        base = os.environ.get("HARNESS_UPSTREAM_URL")  # a mirror, e.g. inside a firewalled cluster
        if base:
            return f"{base.rstrip('/')}/{path}"
        return self.url_template.format(repo=self.repo, commit=self.commit, path=path)


SYSTEM_PROMPT = "valor/prompts/system_prompt.jinja"
METRICS = "eval/metrics.py"
SPECIALISTS_API = "eval/specialists/api.py"
LOGIC_REWARD = "valor/prompts/logic_reward.txt"
ATTRIBUTE_REWARD = "valor/prompts/attribute_reward.txt"
SPATIAL_REWARD = "valor/prompts/spatial_reward.txt"
CODE_REWARD = "valor/prompts/code_prompt.txt"
API_PROMPT = "valor/prompts/api_prompt.txt"
TRAINING_QUERIES = "valor/reasoning_training/data/reasoning_data.jsonl"

VALOR = UpstreamPin(
    repo="damianomarsili/VALOR",
    commit="cf2442b4485eada8fdade3ebc14040e300317486",
    assets=(
        UpstreamAsset(SYSTEM_PROMPT, "a1b066e6dcd7dc5ae757c920eba91eb8e3a60a0d883540124d45f04ce7a9c16d", 12282,
                      "the program writer's prompt"),
        UpstreamAsset(METRICS, "5ea7a1b4aa56f915472b9d0439c7716752ade1f48970c6d931f8cafb257205e6", 6730,
                      "the GQA judge's prompt"),
        UpstreamAsset(SPECIALISTS_API, "c5657645d0e55753f49b21eca0e14b4f2b0713832c7a857a436eb36170d85901", 7123,
                      "the VQA tool's base prompts"),
        UpstreamAsset(LOGIC_REWARD, "9b56e789523398dd2ab61a95a056dcc35e76987402d4ec29acf83e296b70439a", 1290,
                      "verifier: logic"),
        UpstreamAsset(ATTRIBUTE_REWARD, "67ec5b75d20eb8a229e91e3e28f06429c41e88b9ae54d21bc1938339bc22d6b5", 938,
                      "verifier: attribute"),
        UpstreamAsset(SPATIAL_REWARD, "a526b916c6cf98a806f56511aa276f9368cc5e44bd97dc4c868fae3357719c34", 1072,
                      "verifier: spatial"),
        UpstreamAsset(CODE_REWARD, "25868d463a39ac3d11e7bb85a62b5162decfdbef1cd0020ebe1f347c05a33e42", 1321,
                      "verifier: plan adherence"),
        UpstreamAsset(API_PROMPT, "bb53de1b721cb763c98f273e2eae2145cfdd2fb82160e5d2ad63caf0ca5d8ae7", 2207,
                      "verifier: the tool API shown to it"),
        UpstreamAsset(TRAINING_QUERIES, "2a573ad399edfcbaea73a62d53ef35ab430b702302ea2598329e2043c335d839", 397539,
                      "the 816 training queries"),
    ),
)


def offline() -> bool:
    return any(os.environ.get(name) in _TRUE for name in OFFLINE_VARIABLES)


def _default_cache_dir() -> Path:
    from harness.cache import default_cache_dir

    return default_cache_dir() / "upstream"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class AssetStore:
    """Finds, fetches, checks and caches the files of one pin."""

    pin: UpstreamPin | None = None  # None: the module's VALOR pin, looked up when the store is made
    data_dir: Path | None = None
    cache_dir: Path | None = None
    timeout_s: float = 30.0
    _verified: dict[str, Path] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.pin is None:
            self.pin = VALOR
        if self.data_dir is None and os.environ.get("HARNESS_DATA_DIR"):
            self.data_dir = Path(os.environ["HARNESS_DATA_DIR"]).expanduser()
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else _default_cache_dir()

    def offline_path(self, path: str) -> Path | None:
        return self.data_dir / self.pin.repo / path if self.data_dir is not None else None

    def cache_path(self, path: str) -> Path:
        return self.cache_dir / self.pin.commit / path

    def _how_to_provide(self, asset: UpstreamAsset) -> str:
        where = self.offline_path(asset.path) or Path("DATA_DIR") / self.pin.repo / asset.path
        return (f"put the file of commit {self.pin.commit[:12]} at {where} (e.g. `git clone "
                f"https://github.com/{self.pin.repo} && git -C VALOR checkout {self.pin.commit}` under "
                f"DATA_DIR/{self.pin.repo.split('/')[0]}, then pass --data-dir DATA_DIR), or run "
                f"`python -m harness download` where there is internet")

    def _check(self, asset: UpstreamAsset, data: bytes, origin: str) -> None:
        digest = _sha256(data)
        if digest != asset.sha256:
            raise UpstreamAssetError(
                f"upstream file {asset.path} ({asset.purpose}) at {origin} has sha256 {digest} "
                f"({len(data)} bytes), expected {asset.sha256} ({asset.size} bytes) from "
                f"{self.pin.repo}@{self.pin.commit[:12]}; replace it: {self._how_to_provide(asset)}")

    def status(self, path: str) -> tuple[str, Path | None]:
        """Where a file is available without downloading: ('offline'|'cache', path) or ('missing', None).
        A present copy with the wrong hash counts as missing."""
        asset = self.pin.asset(path)
        for kind, candidate in (("offline", self.offline_path(path)), ("cache", self.cache_path(path))):
            if candidate is not None and candidate.is_file():
                if _sha256(candidate.read_bytes()) == asset.sha256:
                    return kind, candidate
        return "missing", None

    def path(self, path: str) -> Path:
        """A verified local copy of a pinned file, downloading it when needed."""
        if path in self._verified:
            return self._verified[path]
        asset = self.pin.asset(path)
        local = self.offline_path(path)
        if local is not None and local.is_file():
            self._check(asset, local.read_bytes(), str(local))
            self._verified[path] = local
            return local
        cached = self.cache_path(path)
        if cached.is_file():
            self._check(asset, cached.read_bytes(), str(cached))
            self._verified[path] = cached
            return cached
        if offline():
            raise UpstreamAssetError(
                f"upstream file {asset.path} ({asset.purpose}, sha256 {asset.sha256}) is not available offline "
                f"(looked in {local or 'no --data-dir'} and {cached}); {self._how_to_provide(asset)}")
        data = self._download(asset)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(cached.name + f".part{os.getpid()}")
        partial.write_bytes(data)
        partial.replace(cached)  # atomic: a killed download never leaves a half file in the cache
        self._verified[path] = cached
        log.info("fetched %s from %s@%s (%d bytes)", asset.path, self.pin.repo, self.pin.commit[:7], len(data))
        return cached

    def _download(self, asset: UpstreamAsset) -> bytes:
        url = self.pin.url(asset.path)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                data = response.read(asset.size + 1)
        except Exception as exc:
            raise UpstreamAssetError(
                f"cannot download upstream file {asset.path} ({asset.purpose}) from {url}: "
                f"{type(exc).__name__}: {exc}; {self._how_to_provide(asset)}") from exc
        self._check(asset, data, url)
        return data

    def read_bytes(self, path: str) -> bytes:
        return self.path(path).read_bytes()

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8")

    def fetch_all(self) -> Iterator[tuple[UpstreamAsset, Path]]:
        for asset in self.pin.assets:
            yield asset, self.path(asset.path)


# ----------------------------------------------------------------------------- texts inside the files

def _string_assignments(tree: ast.AST, name: str) -> list[tuple[ast.Assign, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str) \
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            found.append((node, node.value.value))
    return found


def _function(tree: ast.Module, name: str, origin: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise UpstreamAssetError(f"{origin}: no function {name}() found")


def judge_prompt_from_source(source: str, origin: str = METRICS) -> str:
    """The GQA judge's prompt: the string assigned to ``prompt`` in ``check_synonyms``
    (three ``{}`` slots: question, ground truth, prediction)."""
    function = _function(ast.parse(source), "check_synonyms", origin)
    found = _string_assignments(function, "prompt")
    if len(found) != 1:
        raise UpstreamAssetError(f"{origin}: expected one string assigned to `prompt` in check_synonyms(), "
                                 f"found {len(found)}")
    prompt = found[0][1]
    if prompt.count("{}") != 3:
        raise UpstreamAssetError(f"{origin}: the judge prompt should have three {{}} slots, has {prompt.count('{}')}")
    return prompt


@dataclass(frozen=True)
class VqaPrompts:
    whole_image: str  # used without a box, or when the box collapses
    crop: str  # used for a padded crop around a box


def vqa_prompts_from_source(source: str, origin: str = SPECIALISTS_API) -> VqaPrompts:
    """The two strings assigned to ``base_prompt`` in ``vqa``: the whole-image one in the
    body of ``if use_full_image:``, the crop one in its ``else``."""
    function = _function(ast.parse(source), "vqa", origin)
    for node in ast.walk(function):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "use_full_image":
            whole = _string_assignments(ast.Module(body=node.body, type_ignores=[]), "base_prompt")
            crop = _string_assignments(ast.Module(body=node.orelse, type_ignores=[]), "base_prompt")
            if len(whole) == 1 and len(crop) == 1:
                return VqaPrompts(whole[0][1], crop[0][1])
    raise UpstreamAssetError(f"{origin}: cannot find the two base_prompt strings of vqa() under "
                             f"`if use_full_image:` / `else:`")


@dataclass
class PaperTexts:
    """The original texts the paper protocol uses, read through one store (each read once)."""

    store: AssetStore = field(default_factory=AssetStore)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def _once(self, key: str, read: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = read()
        return self._memo[key]

    def system_prompt(self) -> str:
        """Verbatim: one line whose line breaks are the two characters backslash and n."""
        return self._once("system", lambda: self.store.read_text(SYSTEM_PROMPT))

    def judge_prompt(self) -> str:
        return self._once("judge", lambda: judge_prompt_from_source(self.store.read_text(METRICS),
                                                                    str(self.store.path(METRICS))))

    def vqa_prompts(self) -> VqaPrompts:
        return self._once("vqa", lambda: vqa_prompts_from_source(self.store.read_text(SPECIALISTS_API),
                                                                 str(self.store.path(SPECIALISTS_API))))

    def verifier_prompt(self, path: str) -> str:
        return self._once(path, lambda: self.store.read_text(path))

    def training_queries(self) -> list[dict[str, Any]]:
        rows = []
        for number, line in enumerate(self.store.read_text(TRAINING_QUERIES).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UpstreamAssetError(f"{TRAINING_QUERIES} line {number}: {exc}") from None
        return rows
