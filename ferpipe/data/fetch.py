"""Getting the FER2013 source: the local copy, Kaggle (kagglehub) or an http(s) URL, with sha256
checks; then `fetch_raw`, the download stage's whole job, which normalizes it into
`data/raw/images.zip` (see `ferpipe.data.archive`)."""

from __future__ import annotations

import contextlib
import http.client
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ferpipe.core.errors import DataError, OutputError
from ferpipe.core.files import sha256_of
from ferpipe.core.outputs import Outputs, output_conflicts, stage_outputs
from ferpipe.core.params import REMOTE_SOURCES
from ferpipe.data.archive import MAX_MEMBERS, MAX_UNPACKED_BYTES, check_archive
from ferpipe.data.fer2013_csv import CSV_NAME
from ferpipe.data.raw_archive import write_raw_archive
from ferpipe.data.splits import RAW_ARCHIVE


def verify_sha256(path: Path, expected: str | None, if_wrong: str) -> None:
    """Check `path` against an expected hex sha256 (skipped when `expected` is empty).

    Args:
        if_wrong: appended to the error message: what happened to the file, what to do.

    Raises:
        DataError: the hashes differ; the message shows both, then `if_wrong`.
    """
    if not expected:
        return
    actual = sha256_of(path)
    if actual.lower() != expected.lower():
        raise DataError(f"{path}: sha256 mismatch: expected {expected}, got {actual}; {if_wrong}")


def http_download(url: str, dest: Path, sha256: str | None = None,
                  max_unpacked_bytes: int = MAX_UNPACKED_BYTES, max_members: int = MAX_MEMBERS
                  ) -> Path:
    """Stream `url` to `dest.part` with a progress bar, check it, then rename it to `dest`.

    The sha256 (when given) is checked on the `.part` file before the rename; on a mismatch the
    `.part` file is removed. The body must then be a zip or tar archive that reads to its end
    (`ferpipe.data.archive.check_archive`): an HTML page, or a body cut short without a
    Content-Length, is never renamed to `dest`. A download that fails any check (an error,
    fewer bytes than the server's Content-Length, not a readable archive) leaves only
    `dest.part`, never a broken `dest`.

    Raises:
        DataError: the request failed (offline, HTTP error), stopped early, or is not a readable
            zip or tar archive, naming the URL and the `.part` file; or the sha256 does not
            match, showing both hashes.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    received, total = 0, None
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
    except (OSError, http.client.HTTPException) as err:
        raise DataError(f"could not download {url}: {err}") from err
    if total is not None and received < total:
        # http.client ends a body cut short by the server without an error: compare the sizes.
        raise DataError(f"could not download {url}: the connection closed after {received} of "
                        f"{total} bytes; the partial file is {part}")
    try:
        verify_sha256(part, sha256, "the download was removed")
    except DataError:
        part.unlink()
        raise
    try:
        check_archive(part, max_unpacked_bytes, max_members)
    except DataError as err:
        raise DataError(f"could not download {url}: what it sent is not a readable zip or tar "
                        f"archive ({err}); the file is kept as {part}") from err
    part.replace(dest)
    return dest


def kaggle_download(handle: str) -> Path:
    """Download a Kaggle dataset through kagglehub and return its unpacked folder.

    Raises:
        DataError: kagglehub is missing or the download failed (offline, unknown handle).
    """
    try:
        import kagglehub
    except ImportError as err:
        raise DataError("the kaggle: source needs kagglehub (pip install kagglehub)") from err
    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as err:  # kagglehub raises many types (HTTP, connection, auth)
        raise DataError(f"could not download kaggle:{handle}: {err}") from err


def local_path(source: str) -> Path | None:
    """The local file or folder `download.source` names, or None for `kaggle:` and URLs."""
    if source.startswith(REMOTE_SOURCES):
        return None
    return Path(source)


def fetch_raw(source: str, local_archive: Path, dest: Path, sha256: str | None = None,
              max_unpacked_bytes: int = MAX_UNPACKED_BYTES, max_members: int = MAX_MEMBERS,
              outputs: Outputs | None = None) -> dict[str, dict[str, int]]:
    """Fetch FER2013 and write it to `dest/images.zip` in the normalized layout.

    `local_archive` is looked at first (as torchvision datasets check their root before
    downloading): if it exists it is used and the network is not touched. Otherwise `source` is
    `kaggle:<owner>/<dataset>` (through kagglehub), an `http(s)://` URL (saved to
    `local_archive`), or a local archive (zip, tar, tar.gz), `fer2013.csv` or folder. The source
    is never modified, and a local file whose sha256 does not match is not deleted.

    `dest` is written as a folder output of the download stage (see `ferpipe.core.outputs`): before
    anything is fetched it is checked to be missing, empty or the stage's own earlier output,
    and that it neither holds nor lies inside the source or the local archive; the new folder
    replaces it only when complete.

    Args:
        sha256: expected hex sha256 of the archive (None: not checked; folders are not checked).
        max_unpacked_bytes, max_members: caps on the archive or folder (see `list_files`).
        outputs: the stage's outputs, to swap `dest` in together with the others (None: `dest`
            is swapped in on return).

    Returns:
        File counts per split and class.

    Raises:
        OutputError: `dest` holds files that are not this stage's, or overlaps the source or
            the local archive.
        DataError: the download failed (with where to put the archive to work offline), the
            sha256 does not match (both shown), a cap is exceeded, a member is unsafe, or the
            layout is not FER2013's.
    """
    inputs = [("download.local_archive", str(local_archive))]
    if local_path(source) is not None:
        inputs.append(("download.source", source))
    problems = output_conflicts([("download.out", str(dest), True)], inputs)
    if problems:
        raise OutputError("\n".join(problems))
    with contextlib.nullcontext(outputs) if outputs else stage_outputs() as outs:
        folder = outs.folder(dest, "download", {RAW_ARCHIVE})
        path = _source_path(source, local_archive, sha256, max_unpacked_bytes, max_members)
        return write_raw_archive(path, folder / RAW_ARCHIVE, max_unpacked_bytes, max_members)


def _source_path(source: str, local_archive: Path, sha256: str | None,
                 max_unpacked_bytes: int, max_members: int) -> Path:
    """The local archive, file or folder to read: `local_archive` if it exists, else `source`
    (downloaded first when it is Kaggle or a URL), its sha256 checked."""
    expected = sha256
    if local_archive.exists():
        print(f"using local copy {local_archive}")
        path = local_archive
    elif source.startswith("kaggle:"):
        try:
            path = kaggle_download(source.removeprefix("kaggle:"))
        except DataError as err:
            raise DataError(f"{err}; to work offline, put the FER2013 archive (the Kaggle zip) "
                            f"at {local_archive} and run again") from err
    elif source.startswith(("http://", "https://")):
        try:
            path = http_download(source, local_archive, sha256, max_unpacked_bytes, max_members)
        except DataError as err:
            raise DataError(f"{err}; to work offline, put the archive at {local_archive} "
                            f"and run again") from err
        expected = None  # http_download checked it before the rename
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"download.source: {path} does not exist (expected kaggle:<owner>/"
                            f"<dataset>, an http(s) URL, or a local archive, {CSV_NAME} or "
                            f"folder)")
    if path.is_file():
        verify_sha256(path, expected, "the file was not deleted: replace it with a good copy, "
                                      "or correct download.sha256")
    elif expected:
        print(f"note: {path} is a folder; download.sha256 applies to archives and is skipped")
    return path
