"""The plain data objects that flow between the stages of an evaluation.

task registry -> Sample -> system -> Prediction -> scorer -> record (a JSON line)
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image


class Status:
    """Outcome of producing one prediction. A failure is data, never a silent zero."""

    OK = "ok"
    NO_ANSWER = "no_answer"  # the program ran but set no answer
    EXCEPTION = "exception"  # the program raised; detail holds the traceback
    TIMEOUT = "timeout"
    MEMORY = "memory"
    KILLED = "killed"
    TOOL_ERROR = "tool_error"
    FORMAT_ERROR = "format_error"  # model output without a usable plan/program
    API_ERROR = "api_error"  # a remote model call failed after retries
    MISSING = "missing"  # the predictions file has no entry for this sample
    IMAGE_ERROR = "image_error"
    DATA_ERROR = "data_error"  # the dataset row could not be turned into a sample
    SYSTEM_ERROR = "system_error"  # an unexpected error inside the system itself
    SCORING_ERROR = "scoring_error"  # the harness failed to score the prediction (a bug: the detail says where)
    TOOL_SERVER_ERROR = "tool_server_error"  # a tool itself failed (its model or endpoint), not the program's call

    ALL = (
        OK, NO_ANSWER, EXCEPTION, TIMEOUT, MEMORY, KILLED, TOOL_ERROR, FORMAT_ERROR,
        API_ERROR, MISSING, IMAGE_ERROR, DATA_ERROR, SYSTEM_ERROR, SCORING_ERROR, TOOL_SERVER_ERROR,
    )
    # Outcomes of the infrastructure, not of the model: never scored, never ranked, redone by --resume.
    INFRASTRUCTURE = (API_ERROR, IMAGE_ERROR, DATA_ERROR, SYSTEM_ERROR, SCORING_ERROR, TOOL_SERVER_ERROR)


class AnswerType:
    YESNO = "yesno"
    INTEGER = "integer"
    FLOAT = "float"  # scored by mean relative accuracy
    MULTIPLE_CHOICE = "multiple_choice"
    WORD = "word"  # a short answer compared after normalisation
    OPEN = "open"  # free text, judged by an LLM judge when one is configured
    NONE = "none"  # training questions that carry no answer

    ALL = (YESNO, INTEGER, FLOAT, MULTIPLE_CHOICE, WORD, OPEN, NONE)


class ImageError(RuntimeError):
    """An image could not be read; the message names the sample and the source."""


class ImageRef:
    """Where a sample's image lives. Nothing is read until a system asks for it."""

    def read_bytes(self) -> bytes:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def load(self) -> Image.Image:
        try:
            image = Image.open(io.BytesIO(self.read_bytes()))
            image.load()
        except ImageError:
            raise
        except Exception as exc:  # PIL raises many unrelated types for bad files
            raise ImageError(f"cannot decode image {self.describe()}: {exc}") from exc
        return image.convert("RGB") if image.mode != "RGB" else image

    def size(self) -> tuple[int, int]:
        """(width, height) from the file header, without decoding the pixels."""
        try:
            with Image.open(io.BytesIO(self.read_bytes())) as image:
                return image.size
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(f"cannot decode image {self.describe()}: {exc}") from exc

    def content_hash(self) -> str:
        return hashlib.sha256(self.read_bytes()).hexdigest()

    def file_name(self) -> str | None:
        """The image's file name, where its source gives one (``000000123.jpg``), else None."""
        return None


@dataclass(frozen=True)
class FileImage(ImageRef):
    path: str

    def read_bytes(self) -> bytes:
        try:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read image file {self.path}: {exc.strerror or exc}") from exc

    def describe(self) -> str:
        return self.path

    def file_name(self) -> str | None:
        return Path(self.path).name


@dataclass(frozen=True)
class BytesImage(ImageRef):
    data: bytes
    origin: str = "<bytes>"

    def read_bytes(self) -> bytes:
        return self.data

    def describe(self) -> str:
        return self.origin


@dataclass(frozen=True)
class LazyImage(ImageRef):
    """An image fetched on demand, e.g. one row of a memory-mapped Arrow table."""

    fetch: Callable[[], bytes]
    origin: str
    name: str | None = None  # the file name the dataset stored with the image, if any

    def read_bytes(self) -> bytes:
        try:
            return self.fetch()
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(f"cannot read image {self.origin}: {exc}") from exc

    def describe(self) -> str:
        return self.origin

    def file_name(self) -> str | None:
        return Path(self.name).name if self.name else None


@dataclass(frozen=True)
class UrlImage(ImageRef):
    """A local file when present, else a download cached under ``cache_dir``."""

    url: str
    cache_dir: str
    local_path: str | None = None

    def _cached_path(self) -> Path:
        suffix = Path(self.url.split("?")[0]).suffix or ".img"
        return Path(self.cache_dir) / (hashlib.sha256(self.url.encode()).hexdigest()[:24] + suffix)

    def read_bytes(self) -> bytes:
        if self.local_path and Path(self.local_path).is_file():
            return Path(self.local_path).read_bytes()
        cached = self._cached_path()
        if cached.is_file():
            return cached.read_bytes()
        if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True", "YES"):
            where = f"no local copy at {self.local_path}" if self.local_path else "no local copy"
            raise ImageError(f"image {self.url}: {where}, and downloads are off (HF_HUB_OFFLINE)")
        try:
            with urllib.request.urlopen(self.url, timeout=30) as response:
                data = response.read()
        except Exception as exc:
            where = f" (no local copy at {self.local_path})" if self.local_path else ""
            raise ImageError(f"cannot download image {self.url}{where}: {exc}") from exc
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(cached.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(cached)  # atomic, so an interrupted download never leaves half a file
        return data

    def describe(self) -> str:
        return self.local_path or self.url

    def file_name(self) -> str | None:
        return Path(self.local_path).name if self.local_path else Path(self.url.split("?")[0]).name or None


@dataclass
class Sample:
    """One benchmark question with its gold answer, as every system receives it."""

    id: str
    task: str
    question: str
    answer: Any
    answer_type: str
    image: ImageRef | None = None
    choices: list[str] | None = None
    cluster: str | None = None  # questions sharing an image share a cluster
    subset: str | None = None  # dataset config or split the row came from
    compat_gold: Any = None  # the gold answer exactly as the original evaluation compared it
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when the row could not be turned into a usable sample


@dataclass
class Prediction:
    """What a system produced for one sample."""

    sample_id: str
    answer: Any = None
    status: str = Status.OK
    raw: str | None = None  # raw model output text
    detail: str | None = None  # traceback or error message for failures
    plan: str | None = None
    program: str | None = None
    answer_pytype: str | None = None  # Python type of a program's answer, e.g. "numpy.bool_"
    answer_typed: Any = None  # the answer with its Python types (harness.sandbox.runtime.encode_value)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    isolation: list[str] | None = None  # sandbox layers the program ran under
    stdout: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
