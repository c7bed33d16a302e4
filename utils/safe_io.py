"""Budgets and boxes for files that come from elsewhere (docs/data.md#untrusted-files).

Datasets, list folders and checkpoints are downloaded; a crafted file of a few hundred bytes must
not run code, take gigabytes or hours, or make the project read or write outside its folders.
Everything here is refused *before* the expensive step, in one line (:class:`UserError`):

- :func:`check_id`: a list id is a bare file name (no separator, not absolute, not ``.``/``..``).
- :func:`output_path`: a path built from an id stays inside its output folder.
- Writes never follow a link that is already there: :func:`write_atomically` (a private
  temporary file made with exclusive creation, renamed over the target), :func:`save_image` and
  :func:`save_npz` on top of it, :func:`open_for_append` (``O_NOFOLLOW``) for logs; an existing
  target that is a symbolic link or not a regular file is refused. :func:`make_output_dir`
  creates an output folder and refuses one that is a link; :func:`fresh_dir` makes a folder no
  one else can have planted anything in. A read-only folder is one line that names it.
- :func:`check_zip`: members of a zip (a checkpoint, ``cls_labels.npz``) are stored, fit the
  file (declared sizes add up to at most its size: no deflate or overlap bombs) and stay within a
  per-member budget.

Pickles (checkpoints, the original's label file) are walked by :mod:`utils.pickle_scan`.
"""
import errno
import os
import stat
import struct
import tempfile
import zipfile
from typing import Callable, Dict, Optional

import numpy as np

from utils.errors import UserError

# ------------------------------------------------------------------------------ ids and paths
ID_SEPARATORS = {"/", "\\"}


def id_problem(img_id: str) -> Optional[str]:
    """Why ``img_id`` is not a bare file name, or None when it is one."""
    if not img_id:
        return "is empty"
    if os.path.isabs(img_id) or img_id.startswith("~"):
        return "is an absolute path"
    if img_id in (".", "..") or img_id.startswith(".."):
        return "starts with '..'"
    if any(c in ID_SEPARATORS for c in img_id):
        return "holds a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in img_id):
        return "holds control characters"
    if len(img_id) > 255:
        return "is longer than a file name can be"
    return None


def check_id(img_id: str, where: str) -> str:
    """``img_id`` when it is a bare name; else a one-line error naming ``where`` (file and line)."""
    problem = id_problem(img_id)
    if problem is not None:
        raise UserError(f"{where}: id {img_id[:80]!r} {problem}; a list holds bare image ids "
                        "(such as 2007_000032), never paths: fix or replace the list file")
    return img_id


def output_path(folder: str, name: str) -> str:
    """``folder/name``, refused when ``name`` would leave ``folder`` (ids are checked when lists
    are read; this is the second line of defence at every write)."""
    problem = id_problem(name)
    if problem is None:
        return os.path.join(folder, name)
    raise UserError(f"refused to write {name[:80]!r} under {folder}: the name "
                    f"{problem}; outputs are written only inside their folder")


# ------------------------------------------------------------------------------ writes
def _refuse_link(path: str) -> None:
    if os.path.islink(path):
        raise UserError(f"refused to write {path}: it is a symbolic link (to "
                        f"{os.readlink(path)!r}); the project never writes through links it did "
                        "not create: remove the link or pass another folder")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise UserError(f"refused to write {path}: it exists and is not a regular file; remove it "
                        "or pass another folder")


def write_atomically(path: str, write: Callable, binary: bool = False) -> None:
    """Write ``path`` as ``write(f)`` into a private temporary file of the same folder (exclusive
    creation, so no planted file or link is opened), then rename it over ``path``. An existing
    ``path`` that is a symbolic link or not a regular file is refused in one line."""
    folder, name = os.path.split(os.path.abspath(path))
    _refuse_link(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        _refuse_link(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def probe_writable(folder: str) -> bool:
    """Whether a file can be created in ``folder`` (a private temporary file, removed again)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write_test.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def _cannot_write(path: str, exc: OSError) -> UserError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {path}: {exc.strerror} (the folder is read-only for this "
                         "user); pass a writable --work_dir")
    if exc.errno == errno.ELOOP:
        return UserError(f"refused to write {path}: it is a symbolic link; the project never writes "
                         "through links it did not create: remove the link or pass another folder")
    return UserError(f"cannot write {path} ({exc.strerror}); pass a writable folder")


def open_for_append(path: str):
    """``path`` opened for appending text (created if missing) without following a link: a planted
    link or a non-regular file is refused in one line, as is a read-only folder."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | \
        getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    _refuse_link(path)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):   # a FIFO or device planted under the name
        os.close(fd)
        raise UserError(f"refused to write {path}: it exists and is not a regular file; remove it "
                        "or pass another folder")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding="utf-8")


def save_image(path: str, image) -> None:
    """Write a PIL image as PNG to ``path`` through :func:`write_atomically`."""
    write_atomically(path, lambda f: image.save(f, format="PNG"), binary=True)


def save_npz(path: str, **arrays) -> None:
    """Write numpy arrays as an uncompressed ``.npz`` to ``path`` through :func:`write_atomically`."""
    write_atomically(path, lambda f: np.savez(f, **arrays), binary=True)


def make_output_dir(path: str, what: str = "output folder", allow_link: bool = False) -> str:
    """Create the folder ``path`` (and its parents) for outputs; an existing ``path`` that is a
    symbolic link (unless ``allow_link``: a folder the user names on the command line, such as
    ``--work_dir``, is theirs to choose) or not a folder is refused in one line, as is a folder
    this user cannot write to."""
    if os.path.islink(path) and not allow_link:
        raise UserError(f"refused {what} {path}: it is a symbolic link (to {os.readlink(path)!r}); "
                        "outputs are written only into folders the run created or was given: "
                        "remove the link or pass another --work_dir")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"refused {what} {path}: it exists and is not a folder; remove it or pass "
                        "another --work_dir")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} {path}: {exc.strerror}; pass a writable --work_dir") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {what} {path}: it is read-only for this user; pass a "
                        "writable --work_dir")
    return path


def fresh_dir(parent: str, name: str) -> str:
    """A folder created now by this process: ``parent/name``, or ``name_2``, ``name_3``... when
    that exists already (nothing in it can have been planted and no earlier output is rewritten)."""
    make_output_dir(parent, "folder")
    for n in range(1, 10_000):
        path = os.path.join(parent, name if n == 1 else f"{name}_{n}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot create {path}: {exc.strerror}; pass a writable --work_dir") from None
    raise UserError(f"cannot create a new folder {name} in {parent}: 9999 exist; pass --work_dir")


# ------------------------------------------------------------------------------ zip files
CENTRAL_HEADER_BYTES = 46      # the fixed part of one central-directory record


def zip_directory_entries(path: str) -> Optional[int]:
    """How many records the zip file ``path`` may list, read from its end-of-central-directory
    record before anything parses the directory: the larger of the declared count and the
    directory's size over the smallest record (a lie in either cannot hide records from the
    parser, which reads the whole directory). None when no such record is found (not a zip)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - (22 + 65535)))
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        count, cd_size = struct.unpack("<HI", tail[at + 10:at + 16])
        locator = tail[at - 20:at] if at >= 20 else b""
        if locator[:4] == b"PK\x06\x07":          # zip64: the real numbers are in its own record
            (offset,) = struct.unpack("<Q", locator[8:16])
            if offset + 56 <= size:
                f.seek(offset)
                record = f.read(56)
                if record[:4] == b"PK\x06\x06":
                    count, cd_size = struct.unpack("<Q", record[32:40])[0], struct.unpack("<Q", record[40:48])[0]
    return max(count, cd_size // CENTRAL_HEADER_BYTES)


def check_zip(path: str, what: str, max_member: int, max_members: int = 100_000,
              fix: str = "", max_ratio: float = 1.0) -> Dict[str, zipfile.ZipInfo]:
    """The members of the zip file ``path`` by name, after checking that each is stored (not
    compressed), at most ``max_member`` bytes, and that their sizes add up to at most the file's
    size (so no record expands and no two records share bytes).

    ``max_ratio`` > 1 admits compressed records (numpy's ``savez_compressed``) whose declared
    sizes add up to at most ``max_ratio`` times the file's size; Python's zip reader never
    inflates a record past its declared size, so that bounds what reading it can allocate."""
    size = os.path.getsize(path)
    declared = zip_directory_entries(path)
    if declared is not None and declared > max_members:
        raise UserError(f"refused {what} {path}: its directory holds up to {declared} records, more "
                        f"than {max_members}{fix}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read {what} {path} ({exc}); the file is incomplete or not of "
                        f"this kind{fix}") from None
    if len(infos) > max_members:
        raise UserError(f"refused {what} {path}: {len(infos)} records, more than {max_members}{fix}")
    total = 0
    for info in infos:
        stored = info.compress_type == zipfile.ZIP_STORED and info.file_size == info.compress_size
        if not stored and max_ratio <= 1.0:
            raise UserError(f"refused {what} {path}: record {info.filename[:80]!r} is compressed "
                            f"({info.compress_size} -> {info.file_size} bytes); such files are "
                            f"written uncompressed{fix}")
        if info.file_size > max_member:
            raise UserError(f"refused {what} {path}: record {info.filename[:80]!r} declares "
                            f"{info.file_size} bytes, more than the {max_member} such a file "
                            f"needs{fix}")
        total += info.file_size
    if total > size * max_ratio:
        why = "overlapping records" if max_ratio <= 1.0 else f"more than {max_ratio:g} times its size"
        raise UserError(f"refused {what} {path}: its records declare {total} bytes in a file of "
                        f"{size} ({why}){fix}")
    return {i.filename: i for i in infos}


# ------------------------------------------------------------------------------ weight files
MAX_SAFETENSORS_HEADER = 4 << 20    # a ViT-L's header is about 60 KB (one JSON entry per tensor)
MAX_WEIGHT_TENSORS = 20_000         # EVA-02-L has about 600


def check_safetensors(path: str, what: str) -> None:
    """Refuse a ``.safetensors`` file whose JSON header is longer than MAX_SAFETENSORS_HEADER or
    lists more than MAX_WEIGHT_TENSORS tensors, before the header is parsed (a header of a million
    empty tensors takes gigabytes to parse)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"cannot read {what} {path}: not a safetensors file (shorter than its header)")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise UserError(f"refused {what} {path}: its header declares {length} bytes, more than "
                            f"the {MAX_SAFETENSORS_HEADER >> 20} MiB a network's weights need (or than the file)")
        entries = f.read(length).count(b'"dtype"')
    if entries > MAX_WEIGHT_TENSORS:
        raise UserError(f"refused {what} {path}: its header lists {entries} tensors, more than the "
                        f"{MAX_WEIGHT_TENSORS} of any encoder")


def npz_shapes(path: str, what: str) -> Dict[str, tuple]:
    """The shape of every array of an ``.npz`` file (record name without ``.npy``), read from the
    arrays' headers only (call :func:`check_zip` first)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as f:
                    major, _ = np.lib.format.read_magic(f)
                    header = (np.lib.format.read_array_header_1_0 if major == 1
                              else np.lib.format.read_array_header_2_0)
                    shapes[name[:-4]] = header(f)[0]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"cannot read {what} {path} ({str(exc)[:120]}); the file is incomplete or "
                        "not an .npz of arrays") from None
    return shapes
