"""Get the dataset: generate the synthetic set, download the real one, or link a directory."""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import posixpath
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .files import sha256_of  # noqa: F401 (part of this module's API)

log = logging.getLogger(__name__)

FILES = ("train.h5", "val.h5", "test.h5")
SPLIT_OF = {"train.h5": "train", "val.h5": "val", "test.h5": "test"}

# The real RPV-SUSY files (Bhimji et al. 2017), public at NERSC. The directory is known from
# the upstream README and scripts; the hashes are not: sha256=None means "not yet verified".
# Record the hash that fetch prints on the first verified download here, and the download
# becomes checked. Sizes are None (unknown): train.h5 alone holds 412,416 events of 64x64
# images plus other fields, several GB.
BASE_URL = "https://portal.nersc.gov/project/mpccc/wbhimji/RPVSusyData/"
REGISTRY = {
    "train.h5": {"url": BASE_URL + "train.h5", "sha256": None, "size": None},
    "val.h5": {"url": BASE_URL + "val.h5", "sha256": None, "size": None},
    "test.h5": {"url": BASE_URL + "test.h5", "sha256": None, "size": None},
}

CHUNK = 1 << 20  # bytes per read/write while downloading


class FetchError(Exception):
    """An expected failure, reported as one line without a traceback."""


# ---------------------------------------------------------------------------------------------
# Checking files


def check_schema(path) -> int:
    """Check that `path` is an HDF5 file with the dataset's schema; return its number of events.

    The structure only (group, datasets, shapes, lengths, N > 0): the value scan of
    lhccnn.data.validate_file would read the whole multi-GB real file.
    """
    from .data import DataError, validate_file

    try:
        return validate_file(path, check_values=False)
    except DataError as e:
        raise FetchError(str(e)) from None


def synthetic_matches(path, n: int, seed: int) -> str | None:
    """None when `path` is the synthetic file we would write for (n, seed), else why not."""
    import h5py

    from . import synthetic

    try:
        check_schema(path)
    except FetchError as e:
        return str(e)
    with h5py.File(path, "r") as f:
        a = dict(f.attrs)
    want = {
        "generator": "lhccnn.synthetic",
        "seed": seed,
        "n_events": n,
        "version": synthetic.VERSION,
    }
    got = {k: a.get(k) for k in want}
    if isinstance(got["generator"], bytes):
        got["generator"] = got["generator"].decode()
    diff = [f"{k}={got[k]!r} (want {v!r})" for k, v in want.items() if got[k] != v]
    return f"{path}: exists with {', '.join(diff)}" if diff else None


# ---------------------------------------------------------------------------------------------
# Downloading


def _content_range_total(value: str | None):
    # "bytes 100-199/200" -> 200; "*" or missing -> None
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def download(
    url: str,
    dest,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest`, resuming and retrying; verify size and sha256; rename at the end.

    Bytes go to `dest.part`; after an interruption the next attempt asks for the rest with an
    HTTP Range request (a server that ignores Range sends the whole file and we start over).
    Attempts wait backoff * 2**k seconds. A 404 (or other 4xx) fails at once. On a hash or
    size mismatch the .part is deleted and nothing is left under `dest`.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    total = size
    last_error = None
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
    try:
        for attempt in range(retries + 1):
            if attempt:
                delay = backoff * 2 ** (attempt - 1)
                log.warning(
                    "%s: %s; retry %d/%d in %.1f s", url, last_error, attempt, retries, delay
                )
                time.sleep(delay)
            have = part.stat().st_size if part.exists() else 0
            if total is not None and have >= total:
                break  # complete from an earlier attempt
            req = urllib.request.Request(url, headers={"User-Agent": "lhccnn-fetch"})
            if have:
                req.add_header("Range", f"bytes={have}-")
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    if have and resp.status == 206:
                        total = _content_range_total(resp.headers.get("Content-Range")) or total
                        mode = "ab"
                    else:  # 200: the whole file (first attempt, or Range not supported)
                        have, mode = 0, "wb"
                        length = resp.headers.get("Content-Length")
                        total = int(length) if length and length.isdigit() else total
                    bar.reset(total=total)
                    bar.update(have)
                    with open(part, mode) as out:
                        while True:
                            block = resp.read(CHUNK)
                            if not block:
                                break
                            out.write(block)
                            have += len(block)
                            bar.update(len(block))
                if total is None or have >= total:
                    break
                # the server closed the connection before the announced length: resume
                last_error = f"connection closed after {have} of {total} bytes"
            except urllib.error.HTTPError as e:
                if e.code == 416 and have:  # nothing left to send: the .part is complete
                    break
                if 400 <= e.code < 500:
                    raise FetchError(
                        f"{url}: HTTP {e.code} {e.reason} (expected the file "
                        f"{dest.name}; check the URL or --base-url)"
                    ) from None
                last_error = f"HTTP {e.code} {e.reason}"
            except (
                urllib.error.URLError,
                http.client.HTTPException,
                ConnectionError,
                TimeoutError,
            ) as e:
                last_error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        else:
            raise FetchError(
                f"{url}: download failed after {retries + 1} attempts "
                f"({last_error}); run again to resume from {part.name}"
            )
    finally:
        bar.close()

    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: got {got_size} bytes, expected {size}; removed the download")
    digest = sha256_of(part)
    if sha256 is None:
        log.warning(
            "%s: no sha256 recorded; got sha256=%s (%d bytes) - record it in "
            "lhccnn.fetch.REGISTRY once the file is verified",
            dest.name,
            digest,
            got_size,
        )
    elif digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise FetchError(
            f"{url}: sha256 {digest} does not match the expected {sha256}; removed the download"
        )
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# The three sources


def fetch_synthetic(out: Path, sizes: dict, seed: int, force: bool, progress: bool) -> None:
    from . import synthetic

    for name in FILES:
        split = SPLIT_OF[name]
        n, s = sizes[split], synthetic.split_seed(seed, split)
        path = out / name
        if path.exists() or path.is_symlink():
            why = synthetic_matches(path, n, s)
            if why is None and not force:
                log.info("%s: up to date (%d events, seed %d), skipping", path, n, s)
                continue
            if why is not None and not force:
                raise FetchError(
                    f"{why}; use --force to overwrite or --out to choose another directory"
                )
            if path.is_symlink():
                path.unlink()  # never write through a link into someone else's directory
        log.info("%s: generating %d synthetic events (seed %d)", path, n, s)
        synthetic.write_file(path, n, s, progress=progress)


def fetch_download(
    out: Path,
    base_url: str | None,
    force: bool,
    progress: bool,
    retries: int,
    backoff: float,
    timeout: float,
) -> None:
    for name in FILES:
        entry = REGISTRY[name]
        url = entry["url"]
        if base_url:  # e.g. a mirror, or a local server in the tests
            url = base_url.rstrip("/") + "/" + posixpath.basename(urllib.parse.urlparse(url).path)
        path = out / name
        if path.exists() and not force:
            # fast check (schema and size); --force re-downloads and re-verifies the hash
            n = check_schema(path)
            if entry.get("size") is not None and path.stat().st_size != entry["size"]:
                raise FetchError(
                    f"{path}: {path.stat().st_size} bytes, expected "
                    f"{entry['size']}; use --force to download again"
                )
            log.info("%s: present (%d events), skipping", path, n)
            continue
        if path.is_symlink():
            path.unlink()
        log.info("%s: downloading %s", path, url)
        download(
            url,
            path,
            sha256=entry.get("sha256"),
            size=entry.get("size"),
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            progress=progress,
        )
        try:
            n = check_schema(path)
        except FetchError:
            path.unlink(missing_ok=True)
            raise
        log.info("%s: %d events", path, n)


def fetch_directory(src: Path, out: Path, force: bool) -> None:
    """Validate the three files in `src` and symlink them into `out`.

    Links, not copies: at NERSC the files (GBs) sit on a shared filesystem and the loaders only
    need to open out/train.h5 etc. (Alternatively point LHCCNN_DATA_DIR at src directly.)
    """
    if not src.is_dir():
        raise FetchError(
            f"{src}: not a directory (expected one holding {', '.join(FILES)}; "
            f"or use --source synthetic or download)"
        )
    for name in FILES:  # validate all before linking any
        check_schema(src / name)
    if src.resolve() == out.resolve():
        log.info("%s: the files are already there", out)
        return
    for name in FILES:
        target, link = (src / name).resolve(), out / name
        if link.is_symlink() and link.resolve() == target:
            log.info("%s: already links to %s, skipping", link, target)
            continue
        if (link.exists() or link.is_symlink()) and not force:
            raise FetchError(
                f"{link}: exists and is not a link to {target}; use --force to replace it"
            )
        tmp = link.with_name(f".{name}.link-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)  # atomic: never a moment without a valid file
        log.info("%s -> %s", link, target)


# ---------------------------------------------------------------------------------------------
# Command line


def parser() -> argparse.ArgumentParser:
    from . import synthetic

    sp = synthetic.SPLITS
    p = argparse.ArgumentParser(
        prog="lhccnn fetch",
        description="Put train.h5, val.h5 and test.h5 (group all_events: hist, y, weight) into "
        "the data directory. By default generates the embedded synthetic dataset; "
        "files already there are checked and skipped.",
        epilog="examples:  python data/fetch.py  |  python data/fetch.py --source download  |  "
        "python data/fetch.py --source /path/to/RPVSusyData",
    )
    p.add_argument(
        "--source",
        default="synthetic",
        metavar="synthetic|download|DIR",
        help="synthetic (default): generate; download: fetch the real RPV-SUSY files "
        "from NERSC's portal (several GB); DIR: link the three files of an "
        "existing directory (e.g. on a shared filesystem)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: $LHCCNN_DATA_DIR or data/synthetic)",
    )
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        help=f"synthetic train events (default {sp['train']['n']})",
    )
    p.add_argument(
        "--n-val",
        type=int,
        default=None,
        help=f"synthetic validation events (default {sp['val']['n']})",
    )
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help=f"synthetic test events (default {sp['test']['n']})",
    )
    p.add_argument("--seed", type=int, default=None, help="synthetic base seed (default 0)")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing files instead of checking and skipping them",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars, only warnings")
    g = p.add_argument_group("download")
    g.add_argument(
        "--base-url", default=None, help=f"download from this directory URL instead of {BASE_URL}"
    )
    g.add_argument("--retries", type=int, default=5, help="retries per file (default 5)")
    g.add_argument(
        "--backoff",
        type=float,
        default=2.0,
        help="first retry delay in seconds, doubling each time (default 2)",
    )
    g.add_argument("--timeout", type=float, default=60.0, help="socket timeout, s (default 60)")
    return p


def run(args) -> None:
    from . import config, synthetic

    out = args.out if args.out is not None else config.data_dir()
    progress = not args.quiet
    synthetic_only = {
        "--n-train": args.n_train,
        "--n-val": args.n_val,
        "--n-test": args.n_test,
        "--seed": args.seed,
    }
    if args.source != "synthetic":
        used = [k for k, v in synthetic_only.items() if v is not None]
        if used:
            raise FetchError(f"{', '.join(used)} only apply to --source synthetic")
    if args.source != "download" and args.base_url:
        raise FetchError("--base-url only applies to --source download")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(
            f"{out}: cannot create the output folder ({e.strerror}); choose another with --out"
        ) from None
    if args.source == "synthetic":
        sizes = {
            s: v if v is not None else synthetic.SPLITS[s]["n"]
            for s, v in (("train", args.n_train), ("val", args.n_val), ("test", args.n_test))
        }
        bad = {s: v for s, v in sizes.items() if v < 1}
        if bad:
            raise FetchError(f"sizes must be >= 1, got {bad}")
        fetch_synthetic(out, sizes, args.seed or 0, args.force, progress)
    elif args.source == "download":
        fetch_download(
            out, args.base_url, args.force, progress, args.retries, args.backoff, args.timeout
        )
    else:
        fetch_directory(Path(args.source), out, args.force)
    log.info("data ready in %s", out)


class _Formatter(logging.Formatter):
    # progress messages plain, problems prefixed: "error: <file or URL>: <what was expected>"
    def format(self, record):
        msg = record.getMessage()
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    args = parser().parse_args(argv)
    # Messages go to stderr through logging; the handler lives only for this call so that
    # repeated calls (tests, notebooks) do not print twice.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    pkg = logging.getLogger("lhccnn")
    old_level = pkg.level
    pkg.addHandler(handler)
    pkg.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        run(args)
        return 0
    except FetchError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; partial files were removed (downloads resume from .part)")
        return 130
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)
