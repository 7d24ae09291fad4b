"""Which files of a dataset repository hold one config/split, and which revision a copy holds.

``datasets.load_dataset(folder, name=config)`` reads the whole README: it picks
the file format from the README's FIRST config and resolves that config's files
even when another config is asked for. A hub download or a local copy made with
allow-patterns holds only the configs a task reads, so that call fails whenever
the first config is not among them (BLINK's first config is ``Art_Style``;
lmms-lab/GQA's is ``challenge_all_images``). This module resolves one part on
its own: its files from the README's ``configs:`` entry (or the task's
``data_files``), their format from their own extensions, and the features the
README declares for that config. Nothing outside the part's files is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

README = "README.md"
REVISION_FILE = "REVISION"  # a hand-made copy may name its commit here (one line)


class LayoutError(ValueError):
    """The copy does not hold what the task asks for; the message says what is missing."""


@dataclass(frozen=True)
class PartFiles:
    """The files of one config/split and how ``datasets`` must read them."""

    files: tuple[str, ...]  # absolute paths
    module: str  # packaged builder: parquet, json, arrow, csv
    where: str  # what was asked, for messages
    builder_kwargs: dict[str, Any] = field(default_factory=dict)  # the config's own builder settings (sep, field...)
    features: Any = None  # datasets.Features the README declares for the config, or None


@dataclass(frozen=True)
class Card:
    """The README's YAML header: declared configs (in order) and their features."""

    configs: dict[str, dict[str, Any]]
    features: dict[str, Any]  # config name -> datasets.Features
    present: bool  # whether README.md exists


def read_card(root: Path) -> Card:
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    readme = root / README
    if not readme.is_file():
        return Card({}, {}, False)
    try:
        data = DatasetCard.load(readme).data
    except Exception as exc:  # a broken YAML header is the copy's fault, not ours
        raise LayoutError(f"{readme}: cannot read the YAML header ({type(exc).__name__}: {exc})") from exc
    data = data if data is not None else DatasetCardData()
    try:
        configs = MetadataConfigs.from_dataset_card_data(data)
        infos = DatasetInfosDict.from_dataset_card_data(data)
    except Exception as exc:
        raise LayoutError(f"{readme}: malformed 'configs' or 'dataset_info' ({exc})") from exc
    features = {name: info.features for name, info in infos.items() if info.features is not None}
    return Card(dict(configs), features, True)


def _config_name(card: Card, config: str | None, root: Path) -> str | None:
    """The README config a part reads, or None when the README declares none."""
    if not card.configs:
        return None
    names = list(card.configs)
    if config is not None:
        if config not in card.configs:
            raise LayoutError(f"{root / README} declares no config {config!r}; it declares: {', '.join(names)}")
        return config
    defaults = [n for n, params in card.configs.items() if params.get("default")]
    if defaults:
        return defaults[0]
    if len(names) == 1:
        return names[0]
    if "default" in card.configs:
        return "default"
    raise LayoutError(f"{root / README} declares several configs ({', '.join(names)}) and none is the default: "
                      f"name one in the task's dataset.parts[].config")


def _split_patterns(data_files: Any, split: str, where: str, readme: Path) -> list[str]:
    from datasets.data_files import sanitize_patterns

    try:
        by_split = sanitize_patterns(data_files)
    except Exception as exc:
        raise LayoutError(f"{readme}: {where}: malformed data_files ({exc})") from exc
    if split not in by_split:
        raise LayoutError(f"{readme}: {where} declares no split {split!r}; it declares: {', '.join(by_split)} "
                          f"(a pinned dataset revision keeps split names stable)")
    return [str(p) for p in by_split[split]]


def _inferred_patterns(base: Path, split: str, where: str) -> list[str]:
    """Split patterns the way ``datasets`` infers them from file names (train.jsonl, data/test-*...)."""
    from datasets.data_files import EmptyDatasetError, get_data_patterns

    try:
        by_split = get_data_patterns(base.as_posix())
    except EmptyDatasetError:
        raise LayoutError(f"{where}: no data files under {base}") from None
    if split not in by_split:
        raise LayoutError(f"{where}: no split {split!r} among the files under {base} "
                          f"(splits found from file names: {', '.join(by_split)})")
    return [str(p) for p in by_split[split]]


def _resolve(patterns: list[str], base: Path, where: str) -> list[str]:
    """The data files the patterns match, as ``datasets`` resolves them: files of known data formats
    only, a wildcard pattern may match nothing, a plain path must exist, and one file at least."""
    from datasets.data_files import contains_wildcards, resolve_pattern
    from datasets.load import _ALL_ALLOWED_EXTENSIONS

    files: list[str] = []
    for pattern in patterns:
        try:
            found = resolve_pattern(pattern, base.as_posix(), allowed_extensions=_ALL_ALLOWED_EXTENSIONS)
        except FileNotFoundError:
            if contains_wildcards(pattern):
                continue
            state = "is not a data file" if (base / pattern).is_file() else "is missing: the copy lacks it"
            raise LayoutError(f"{base / pattern} ({where}) {state}") from None
        files += [f for f in found if f not in files]
    if not files:
        shown = ", ".join(repr(p) for p in patterns)
        raise LayoutError(f"no data file matches {shown} ({where}) under {base}: the copy lacks these files "
                          f"(a partial download must include them)")
    return files


def _module_for(files: list[str], where: str) -> tuple[str, dict[str, Any], list[str]]:
    """The format of a part's files, chosen as ``datasets`` does (the most common extension), and the
    files of that format; ``datasets`` leaves the others out, so it is logged which."""
    from datasets.data_files import DataFilesList
    from datasets.load import infer_module_for_data_files_list
    from datasets.packaged_modules import _MODULE_TO_EXTENSIONS, _MODULE_TO_METADATA_EXTENSIONS

    module, kwargs = infer_module_for_data_files_list(DataFilesList(files, [()] * len(files)))
    if module is None:
        raise LayoutError(f"{where}: no readable data format among {', '.join(Path(f).name for f in files)}")
    extensions = tuple(e.lower() for e in _MODULE_TO_EXTENSIONS[module] + _MODULE_TO_METADATA_EXTENSIONS[module])
    kept = [f for f in files if f.lower().endswith(extensions)]
    if len(kept) < len(files):
        log.warning("%s: reading the %s files; left out, as datasets does: %s", where, module,
                    ", ".join(Path(f).name for f in files if f not in kept))
    return module, dict(kwargs), kept


def _builder_settings(module: str, params: dict[str, Any]) -> dict[str, Any]:
    """The config's own builder settings (``sep``, ``field``...) that the format's builder knows, as the library
    passes them; declaration-only keys are left out."""
    from datasets.load import import_main_class
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    config_class = import_main_class(_PACKAGED_DATASETS_MODULES[module][0]).BUILDER_CONFIG_CLASS
    skip = {"config_name", "data_files", "data_dir", "default", "features"}
    return {k: v for k, v in params.items() if k not in skip and hasattr(config_class, k)}


def part_files(root: Path, split: str, config: str | None = None, data_files: str | None = None) -> PartFiles:
    """The files of one part of the dataset copied at ``root``.

    ``data_files`` (a pattern relative to ``root``) wins over the README; else the
    README's entry for ``config`` (or its default config) names the files of
    ``split``; a README without ``configs:`` leaves the split to the file names,
    as ``datasets`` infers it. A config the README does not declare is an error.
    """
    card = read_card(root)
    readme = root / README
    where = f"config {config!r} split {split!r}" if config else f"split {split!r}"
    name = _config_name(card, config, root) if data_files is None or config else None
    params = card.configs.get(name, {}) if name else {}
    base = root / params["data_dir"] if params.get("data_dir") else root
    if data_files is not None:
        patterns, where = [data_files], "the task's data_files"
    elif name is not None and params.get("data_files") is not None:
        where = f"config {name!r} split {split!r}"
        patterns = _split_patterns(params["data_files"], split, f"config {name!r}", readme)
    elif name is not None:  # a config that gives only a data_dir
        where = f"config {name!r} split {split!r}"
        patterns = _inferred_patterns(base, split, where)
    elif config is not None:
        state = "has no 'configs:' header" if card.present else "is missing"
        raise LayoutError(f"{readme} {state}, so config {config!r} cannot be found; the README declares which "
                          f"files make each config (copy it with the data)")
    else:
        patterns = _inferred_patterns(base, split, where)
    files = _resolve(patterns, base, where)
    module, kwargs, files = _module_for(files, where)
    kwargs.update(_builder_settings(module, params))
    return PartFiles(tuple(files), module, where, kwargs, card.features.get(name) if name else None)


# --------------------------------------------------------------------------- revisions

def local_revision(root: Path, files: list[str]) -> str | None:
    """The commit a local copy holds, when it says so.

    ``huggingface_hub`` downloads into a folder (``snapshot_download(local_dir=...)``
    or ``hf download --local-dir``) record each file's commit beside it, and drop
    the record when the file is changed afterwards; a hand-made copy may hold a
    ``REVISION`` file instead. None when neither says.
    """
    from huggingface_hub._local_folder import read_download_metadata

    commits = set()
    for file in files:
        try:
            relative = Path(file).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
        metadata = read_download_metadata(root, relative)
        commits.add(metadata.commit_hash if metadata is not None else None)
    if commits and None not in commits:
        if len(commits) > 1:
            log.warning("%s holds files of several revisions (%s); the results record them all",
                        root, ", ".join(sorted(commits)))
        return "+".join(sorted(commits))
    marker = root / REVISION_FILE
    if marker.is_file():
        text = marker.read_text(encoding="utf-8").strip()
        return text.splitlines()[0].strip() if text else None
    return None
