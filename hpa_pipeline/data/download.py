"""Downloading the public HPA images that the solutions train on besides the Kaggle set.

Two image lists (``source``), one per task:

- ``hpa2021`` (task hpa2021-cells, the 7th-place solution): ``kaggle_2021.tsv`` (Kaggle dataset
  "publichpa-withcellline"), one row per field of view with its URL stem on images.proteinatlas.org and
  its 19-class labels. Every field has four channel files on the server,
  ``{stem}_{red,green,blue,yellow}.tif.gz``; they are verified and stored as ``{ID}_{channel}.tif`` (or
  ``.png``).
- ``hpa_v18`` (task hpa2018-images, every 2018 solution): the HPA v18 list
  (``HPAv18RGBY_WithoutUncertain_wodpl.csv``), ``Id,Target`` with 28-class labels; image ``10580_1610_C1_1``
  has the channel files ``{base}/10580/1610_C1_1_{red,green,blue,yellow}.jpg``. They are verified (decoded
  completely, as :func:`hpa_pipeline.io.channels.read_channel_raw` reads them) and stored as served, as
  ``{ID}_{channel}.jpg``.

Either way the images land in the Kaggle layout, so the rest of the pipeline reads them like any other
dataset.

A download of ~80,000 images takes hours and gets interrupted, so every finished image is recorded in a
manifest as it completes and a rerun fetches only what is missing.
"""

from __future__ import annotations

import email.message
import gzip
import http.client
import io
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from hpa_pipeline import __version__
from hpa_pipeline.config import DOWNLOAD_DEFAULTS, DOWNLOAD_SOURCES
from hpa_pipeline.errors import InputDataError, PipelineError
from hpa_pipeline.io.channels import CHANNELS, decode_jpeg_channel
from hpa_pipeline.io.files import atomic_file
from hpa_pipeline.labels import CLASS_NAMES_2018, parse_labels
from hpa_pipeline.progress import progress

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("ID", "height", "width", "dtype", "finished")
SOURCES = tuple(DOWNLOAD_SOURCES)
IMAGE_FORMATS = ("tif", "png", "jpg")
#: The name of a channel file on each source's server after its URL stem (``{stem}_{channel}{suffix}``).
_SERVER_SUFFIX = {"hpa2021": ".tif.gz", "hpa_v18": ".jpg"}
_REQUIRED_COLUMNS = ("Image", "Label_idx", "in_trainset")
_V18_ID = re.compile(r"(\d+)_([A-Za-z0-9][A-Za-z0-9_-]*)")
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


class DownloadError(PipelineError):
    """The server cannot be used, or too many images failed to download."""


@dataclass
class DownloadResult:
    """What a download run left in its folder.

    Attributes:
        done: IDs whose four channel files are in the folder (this run's and earlier runs'), in table order.
        failed: ID -> reason for every image that could not be downloaded, in table order.
        downloaded: images fetched by this run.
        retried: requests repeated after a transient failure (timeout, connection error, 5xx, truncated data).
    """

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    downloaded: int = 0
    retried: int = 0


# ----------------------------------------------------------------------------------------------- table


def read_public_table(source: str | Path, timeout: float = 60.0) -> pd.DataFrame:
    """Read the public image list (``kaggle_2021.tsv``) from a file or an http(s) URL.

    The file is comma-separated despite its name (the original reads it with pandas' defaults); a
    tab-separated copy is accepted too. Rows of the Kaggle train set (``in_trainset`` true) and rows
    without labels are dropped, as in the original.

    Args:
        source: path or URL of the table (columns ``Image``, ``Label_idx``, ``in_trainset``).
        timeout: seconds to wait for the server when ``source`` is a URL.

    Returns:
        The kept rows in file order, columns ID (the stem's last two path parts joined by ``_``, e.g.
        ``10005_921_B9_1``), Label (pipe-separated class indices) and url_path (e.g. ``/10005/921_B9_1``).
    """
    text = _read_text(source, timeout)
    header = text.split("\n", 1)[0]
    separator = "\t" if "\t" in header else ","
    try:
        table = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputDataError(f"cannot read table {source}: {exc}") from exc
    missing = [column for column in _REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise InputDataError(
            f"{source}: missing column(s) {', '.join(missing)} (found {', '.join(map(str, table.columns))})"
        )
    rows = []
    first_row: dict[str, int] = {}
    for position, (image, label_idx, in_trainset) in enumerate(
        zip(table["Image"], table["Label_idx"], table["in_trainset"])
    ):
        row = position + 2  # line number in the file: the header is line 1
        flag = in_trainset.strip().lower()
        if flag not in _TRUE | _FALSE:
            raise InputDataError(f"{source} row {row}: in_trainset is {in_trainset!r}, expected True or False")
        if flag in _TRUE or label_idx.strip().lower() in ("", "nan"):
            continue
        url_path = _url_path(image, f"{source} row {row}")
        image_id = "_".join(url_path.split("/")[-2:])
        labels = parse_labels(label_idx, f"{source} row {row} (Image {image})")
        if image_id in first_row:
            raise InputDataError(
                f"{source}: rows {first_row[image_id]} and {row} both give image ID {image_id} (Image {image})"
            )
        first_row[image_id] = row
        rows.append((image_id, "|".join(map(str, labels)), url_path))
    return pd.DataFrame(rows, columns=["ID", "Label", "url_path"], dtype=str)


def read_v18_table(source: str | Path, timeout: float = 60.0) -> pd.DataFrame:
    """Read the HPA v18 image list (``HPAv18RGBY_WithoutUncertain_wodpl.csv``) from a file or an http(s) URL.

    Args:
        source: path or URL of the table: ``Id`` (``{folder}_{name}``, e.g. ``10580_1610_C1_1``) and
            ``Target`` (space-separated classes 0..27, the 2018 train.csv format).
        timeout: seconds to wait for the server when ``source`` is a URL.

    Returns:
        The rows in file order, columns ID (the ``Id``), Label (pipe-separated class indices) and url_path
        (e.g. ``/10580/1610_C1_1``).
    """
    text = _read_text(source, timeout)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputDataError(f"cannot read table {source}: {exc}") from exc
    missing = [column for column in ("Id", "Target") if column not in table.columns]
    if missing:
        raise InputDataError(
            f"{source}: missing column(s) {', '.join(missing)} (found {', '.join(map(str, table.columns))}); "
            "an HPA v18 list has Id,Target"
        )
    rows = []
    first_row: dict[str, int] = {}
    for position, (image_id, target) in enumerate(zip(table["Id"], table["Target"])):
        row = position + 2  # line number in the file: the header is line 1
        image_id = image_id.strip()
        match = _V18_ID.fullmatch(image_id)
        if match is None:
            raise InputDataError(
                f"{source} row {row}: Id {image_id!r} is not an HPA v18 image Id like 10580_1610_C1_1 "
                "(the server folder's number, an underscore, the image name)"
            )
        labels = parse_labels(target, f"{source} row {row} (Id {image_id})", len(CLASS_NAMES_2018), " ")
        if image_id in first_row:
            raise InputDataError(f"{source}: rows {first_row[image_id]} and {row} both give Id {image_id}")
        first_row[image_id] = row
        rows.append((image_id, "|".join(map(str, labels)), f"/{match[1]}/{match[2]}"))
    return pd.DataFrame(rows, columns=["ID", "Label", "url_path"], dtype=str)


def read_image_list(path: str | Path, source: str = "hpa2021", timeout: float = 60.0) -> pd.DataFrame:
    """Read the image list of ``source`` (:func:`read_public_table` or :func:`read_v18_table`)."""
    if source == "hpa_v18":
        return read_v18_table(path, timeout)
    if source == "hpa2021":
        return read_public_table(path, timeout)
    raise InputDataError(f"unknown image list source {source!r} (sources: {', '.join(SOURCES)})")


def _read_text(source: str | Path, timeout: float) -> str:
    """The table's text from a local file or an http(s) URL."""
    if _is_url(source):
        request = urllib.request.Request(str(source), headers={"User-Agent": f"hpa-pipeline/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read().decode("utf-8")
        except (OSError, http.client.HTTPException, UnicodeDecodeError) as exc:
            raise InputDataError(f"cannot download table {source}: {exc}") from exc
    path = Path(source)
    if not path.is_file():
        raise InputDataError(f"missing table {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"cannot read table {path}: {exc}") from exc


def _is_url(source: str | Path) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def _url_path(image: str, where: str) -> str:
    """``https://host/10005/921_B9_1`` -> ``/10005/921_B9_1``: the part a configurable base URL precedes."""
    path = urllib.parse.urlsplit(image.strip()).path
    parts = [part for part in path.split("/") if part]
    if len(parts) < 2:
        raise InputDataError(f"{where}: Image {image!r} is not a URL stem like https://host/10005/921_B9_1")
    return "/" + "/".join(parts)


# -------------------------------------------------------------------------------------------- download


def download_images(
    table: pd.DataFrame,
    base_url: str,
    out_dir: str | Path,
    *,
    workers: int = DOWNLOAD_DEFAULTS["workers"],
    retries: int = DOWNLOAD_DEFAULTS["retries"],
    timeout: float = DOWNLOAD_DEFAULTS["timeout"],
    backoff: float = 1.0,
    limit: int | None = DOWNLOAD_DEFAULTS["limit"],
    image_format: str | None = None,
    source: str = "hpa2021",
) -> DownloadResult:
    """Download the four channels of every image of ``table`` that ``out_dir`` does not hold yet.

    Each file ``{base_url}{url_path}_{channel}.tif.gz`` (source hpa2021) must decompress completely and
    decode to a 2-D 8- or 16-bit image; each ``{base_url}{url_path}_{channel}.jpg`` (source hpa_v18) must
    decode completely to a grey or RGB 8-bit JPEG. The four channels must have one size; only then are the
    four files written (each atomically) and the image recorded in ``out_dir/manifest.csv``. An image is
    done when it is in the manifest and its four files exist, so an interrupted run resumes where it stopped.

    Args:
        table: the output of :func:`read_image_list` (columns ID, url_path).
        base_url: what precedes the table's URL paths, e.g. ``https://images.proteinatlas.org`` or
            ``http://v18.proteinatlas.org/images``.
        out_dir: folder of ``{ID}_{channel}.tif`` (or ``.png``, ``.jpg``) files and the manifest.
        workers: images downloaded at the same time.
        retries: extra tries of a file after a timeout, connection error, 5xx answer or truncated data
            (a 404 is final).
        timeout: seconds a request may wait for the server.
        backoff: seconds before the first retry; doubled before each further one.
        limit: download only the first ``limit`` images of the table.
        image_format: source hpa2021: "tif" (zlib-compressed TIFF, the default) or "png", both keep 16-bit
            pixels; source hpa_v18: "jpg" (the server's files as served, the only one).
        source: "hpa2021" or "hpa_v18", the list ``table`` was read from.

    Returns:
        The done and failed images.

    Raises:
        DownloadError: the server answered none of the first requests (or stopped answering), so the
            base URL or the network is at fault; finished images stay recorded.
    """
    if source not in SOURCES:
        raise InputDataError(f"unknown image list source {source!r} (sources: {', '.join(SOURCES)})")
    formats = DOWNLOAD_SOURCES[source]["formats"]
    image_format = image_format or formats[0]
    if image_format not in formats:
        raise InputDataError(
            f"image format {image_format!r} is not one of {', '.join(formats)} (the file types of source {source})"
        )
    if workers < 1 or retries < 0 or timeout <= 0 or (limit is not None and limit < 0):
        raise InputDataError(
            f"need workers >= 1, retries >= 0, timeout > 0 and limit >= 0 "
            f"(got {workers}, {retries}, {timeout}, {limit})"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if limit is not None:
        table = table.head(limit)
    ids = table["ID"].tolist()
    _remove_stale_temporaries(out_dir)
    finished = _resume_manifest(out_dir, image_format)
    todo = [(image_id, url_path) for image_id, url_path in zip(ids, table["url_path"]) if image_id not in finished]
    log.info(
        "%d images listed, %d already in %s, %d to download from %s",
        len(ids),
        len(ids) - len(todo),
        out_dir,
        len(todo),
        base_url,
    )
    if "://" not in base_url:
        # a local mirror of the server's layout (the demo's, or a copy fetched elsewhere)
        mirror = Path(base_url)
        if not mirror.is_dir():
            raise InputDataError(f"base URL {base_url} is neither an http(s) URL nor an existing folder")
        base_url = mirror.resolve().as_uri()
    client = _Client(base_url.rstrip("/"), retries, timeout, backoff, workers)
    failed: dict[str, str] = {}
    downloaded = 0
    outcomes = _run_pool(client, todo, out_dir, image_format, source, workers)
    # closing(): an exception here (Ctrl-C, a failed write) reaches the pool at once and cancels its queue.
    with open(out_dir / MANIFEST_NAME, "a", encoding="utf-8") as manifest, closing(outcomes):
        for image_id, outcome in progress(outcomes, "download", len(todo), unit="image"):
            if isinstance(outcome, str):
                failed[image_id] = outcome
                continue
            height, width, dtype = outcome
            finished_at = datetime.now(UTC).isoformat(timespec="seconds")
            # One line per image, on disk before the next: a killed run loses only the images in flight.
            manifest.write(f"{image_id},{height},{width},{dtype},{finished_at}\n")
            manifest.flush()
            os.fsync(manifest.fileno())
            finished.add(image_id)
            downloaded += 1
    if client.abort_reason:
        raise DownloadError(client.abort_reason)
    log.info("downloaded %d images (%d requests retried), %d failed", downloaded, client.retried, len(failed))
    return DownloadResult(
        done=[image_id for image_id in ids if image_id in finished],
        failed={image_id: failed[image_id] for image_id in ids if image_id in failed},
        downloaded=downloaded,
        retried=client.retried,
    )


def _run_pool(
    client: _Client, todo: list[tuple[str, str]], out_dir: Path, image_format: str, source: str, workers: int
) -> Generator[tuple[str, tuple[int, int, str] | str]]:
    """Download ``todo`` with ``workers`` threads, yielding (ID, (height, width, dtype) or reason) as each ends.

    At most ``2 * workers`` images are queued at a time, so an abort leaves little work to cancel.
    """
    pending: dict[Future, str] = {}
    queue = iter(todo)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download") as pool:
        try:
            while True:
                while len(pending) < 2 * workers and not client.abort_reason:
                    item = next(queue, None)
                    if item is None:
                        break
                    future = pool.submit(_download_image, client, item[0], item[1], out_dir, image_format, source)
                    pending[future] = item[0]
                if not pending:
                    return
                completed, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in completed:
                    image_id = pending.pop(future)
                    outcome = future.result()
                    if outcome is not None:  # None: given up after an abort
                        yield image_id, outcome
        except BaseException:
            # Interrupted (Ctrl-C, a failed manifest write): drop the queued images and make the running
            # ones give up, so that leaving the pool does not wait for them.
            client.stop()
            for future in pending:
                future.cancel()
            raise


def _download_image(
    client: _Client, image_id: str, url_path: str, out_dir: Path, image_format: str, source: str
) -> tuple[int, int, str] | str | None:
    """Fetch, verify and store one image; (height, width, dtype), the reason it failed, or None on abort."""
    jpeg = source == "hpa_v18"
    planes = []
    served = []
    for channel in CHANNELS:
        name = f"{url_path}_{channel}{_SERVER_SUFFIX[source]}"
        try:
            data = client.fetch(f"{client.base_url}{name}", name, gunzip=not jpeg)
        except _Aborted:
            return None
        except _Failed as failure:
            return str(failure)
        try:
            planes.append(decode_jpeg_channel(data, channel) if jpeg else _decode_channel(data))
        except ValueError as exc:
            return f"{name}: {exc}"
        served.append(data)
    shapes = {plane.shape for plane in planes}
    if len(shapes) > 1:
        sizes = ", ".join(f"{channel} {plane.shape[1]}x{plane.shape[0]}" for channel, plane in zip(CHANNELS, planes))
        return f"channels differ in size: {sizes}"
    # JPEGs are kept as served: decoding and encoding again would only lose more detail
    encoded = served if jpeg else [_encode_channel(plane, image_format) for plane in planes]
    # The four files appear together: each is renamed into place only after all four were written.
    with ExitStack() as stack:
        for channel, data in zip(CHANNELS, encoded):
            stack.enter_context(atomic_file(out_dir / f"{image_id}_{channel}.{image_format}", "wb")).write(data)
    height, width = planes[0].shape
    dtype = max((plane.dtype for plane in planes), key=lambda dtype: dtype.itemsize)
    return height, width, str(dtype)


def _decode_channel(raw: bytes) -> np.ndarray:
    """Decode one channel's TIFF; ValueError says what is wrong with it."""
    try:
        image = tifffile.imread(io.BytesIO(raw))
    except Exception as exc:  # tifffile raises many types for broken files
        raise ValueError(f"cannot decode the TIFF ({exc})") from exc
    if image.size == 0:
        raise ValueError("the TIFF holds no image")
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, found shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported pixel type {image.dtype} (expected 8- or 16-bit)")
    return image


def _encode_channel(plane: np.ndarray, image_format: str) -> bytes:
    """The file contents of one channel, losslessly compressed at its own bit depth."""
    if image_format == "png":
        ok, buffer = cv2.imencode(".png", plane)
        if not ok:
            raise InputDataError(f"cannot encode a {plane.dtype} {plane.shape} image as PNG")
        return buffer.tobytes()
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, compression="zlib")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- client


class _Failed(Exception):
    """A file could not be fetched; the message is the image's failure reason."""


class _Aborted(Exception):
    """The download was stopped because the server does not answer."""


class _Client:
    """Fetches files with retries and notices a server that answers nothing.

    Every try counts: an answer (any HTTP status but 5xx) resets the count of consecutive unanswered tries
    (connection errors, timeouts, 5xx). When that count reaches ``2 * workers``, every worker has failed
    twice in a row, and at least three images' worth of tries failed (so that one bad file, retried, is not
    mistaken for a dead server): the base URL or the network is at fault and the download stops.
    """

    def __init__(self, base_url: str, retries: int, timeout: float, backoff: float, workers: int) -> None:
        self.base_url = base_url
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.retried = 0
        self.abort_reason = ""
        self._abort_after = max(2 * workers, 3 * (retries + 1))
        self._unanswered = 0
        self._answered = False
        self._stopped = False
        self._lock = threading.Lock()

    def fetch(self, url: str, name: str, gunzip: bool = True) -> bytes:
        """The contents of the file at ``url``, decompressed when ``gunzip`` (``name`` labels the failure reasons)."""
        for attempt in range(self.retries + 1):
            if self.abort_reason or self._stopped:
                raise _Aborted
            if attempt:
                with self._lock:
                    self.retried += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                data = self._get(url)
                return gzip.decompress(data) if gunzip else data
            except urllib.error.HTTPError as exc:
                self._note(answered=exc.code < 500, reason=f"HTTP {exc.code}")
                if exc.code < 500:
                    raise _Failed(f"HTTP {exc.code} for {name}") from exc
                last = f"HTTP {exc.code}"
            except http.client.IncompleteRead:
                last = "truncated transfer"
            except EOFError:  # the gzip stream stops early: a short transfer or a short file
                last = "truncated gzip"
            except (gzip.BadGzipFile, zlib.error) as exc:
                raise _Failed(f"not a valid gzip file ({exc}): {name}") from exc
            except (OSError, http.client.HTTPException) as exc:
                last = _connection_reason(exc)
                self._note(answered=False, reason=last)
        raise _Failed(f"{last} after {self.retries + 1} tries ({name})")

    def stop(self) -> None:
        """Make running downloads give up at their next try (the run was interrupted)."""
        self._stopped = True

    def _get(self, url: str) -> bytes:
        if url.startswith("file:"):
            path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
            if not path.is_file():  # what a server answers with 404: retrying cannot help
                raise urllib.error.HTTPError(url, 404, "no such file", email.message.Message(), None)
            data = path.read_bytes()
            self._note(answered=True, reason="")
            return data
        request = urllib.request.Request(url, headers={"User-Agent": f"hpa-pipeline/{__version__}"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            data = response.read()
        self._note(answered=True, reason="")
        return data

    def _note(self, answered: bool, reason: str) -> None:
        with self._lock:
            if answered:
                self._answered = True
                self._unanswered = 0
                return
            self._unanswered += 1
            if self._unanswered >= self._abort_after and not self.abort_reason:
                what = "stopped answering" if self._answered else "refused every request"
                self.abort_reason = (
                    f"base URL {self.base_url} {what} ({self._unanswered} tries in a row, the last: {reason}); "
                    "check --base-url (extra_train_sets.<name>.download.base_url in the workflow config) and "
                    "the network; images finished so far are kept and a rerun resumes"
                )


def _connection_reason(exc: BaseException) -> str:
    """A short reason for a failed connection: 'connection refused', 'name not resolved', 'timed out', ..."""
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return f"name not resolved ({cause.strerror})"
    if isinstance(cause, ConnectionResetError):
        return "connection reset"
    return f"connection error ({cause})"


# -------------------------------------------------------------------------------------------- manifest


def _resume_manifest(out_dir: Path, image_format: str) -> set[str]:
    """IDs finished by earlier runs; rewrites the manifest without a killed run's partial last line.

    Without the rewrite the next line would be appended to the partial one; lines of images whose files
    are gone are dropped too, so those images are downloaded again.
    """
    path = out_dir / MANIFEST_NAME
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    kept = []
    for line in lines[1:]:
        fields = line.rstrip("\n").split(",")
        if not line.endswith("\n") or len(fields) != len(MANIFEST_COLUMNS) or not fields[0]:
            continue
        if all((out_dir / f"{fields[0]}_{channel}.{image_format}").is_file() for channel in CHANNELS):
            kept.append(line)
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(",".join(MANIFEST_COLUMNS) + "\n")
        handle.writelines(kept)
    return {line.split(",", 1)[0] for line in kept}


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete the temporary files a killed run left (atomic_file's ``.{name}.*.tmp``)."""
    for channel in CHANNELS:
        for suffix in IMAGE_FORMATS:
            for stale in out_dir.glob(f".*_{channel}.{suffix}.*.tmp"):
                stale.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ outputs


def write_download_outputs(
    result: DownloadResult,
    table: pd.DataFrame,
    out_table: str | Path,
    out_failed: str | Path,
    max_failed_fraction: float,
    source: str = "hpa2021",
) -> None:
    """Write the labels of the downloaded images and the list of failures, if few enough failed.

    Args:
        result: the outcome of :func:`download_images`.
        table: the table that was downloaded (columns ID, Label).
        out_table: CSV of the done images in table order, in the train.csv format of the source's task
            (hpa2021: ``ID,Label``, pipe-separated; hpa_v18: ``Id,Target``, space-separated); not written
            when too many images failed.
        out_failed: ``ID,reason`` CSV of the failed images (always written, maybe only its header).
        max_failed_fraction: largest tolerated share of failed images, e.g. 0.01.
        source: "hpa2021" or "hpa_v18", the list ``table`` was read from.

    Raises:
        DownloadError: more than ``max_failed_fraction`` of the images failed.
    """
    failures = pd.DataFrame({"ID": list(result.failed), "reason": list(result.failed.values())}, dtype=str)
    with atomic_file(out_failed, "w", encoding="utf-8", newline="") as handle:
        failures.to_csv(handle, index=False)
    total = len(result.done) + len(result.failed)
    if result.failed:
        shown = 200
        log.warning("%d of %d images failed (listed in %s):", len(result.failed), total, out_failed)
        for image_id, reason in list(result.failed.items())[:shown]:
            log.warning("  %-24s %s", image_id, reason)
        if len(result.failed) > shown:
            log.warning("  ... and %d more in %s", len(result.failed) - shown, out_failed)
    fraction = len(result.failed) / total if total else 0.0
    if fraction > max_failed_fraction:
        raise DownloadError(
            f"{len(result.failed)} of {total} images failed to download ({fraction:.2%}), more than the "
            f"allowed {max_failed_fraction:.2%} (max_failed_fraction); the reasons are in {out_failed}. "
            "Downloaded images are kept and a rerun fetches only the missing ones"
        )
    labels = table.set_index("ID")["Label"]
    done = pd.DataFrame({"ID": result.done, "Label": labels.loc[result.done].to_numpy()}, dtype=str)
    if source == "hpa_v18":
        done = pd.DataFrame({"Id": done["ID"], "Target": done["Label"].str.replace("|", " ")}, dtype=str)
    with atomic_file(out_table, "w", encoding="utf-8", newline="") as handle:
        done.to_csv(handle, index=False)
    log.info("%d images downloaded (%d failed); labels in %s", len(result.done), len(result.failed), out_table)
