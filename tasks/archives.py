"""Read images out of zip and tar archives without trusting them: nothing is extracted to disk.

Opening an archive checks every member first and refuses the whole archive (UnsafeArchive, naming the
member) when one has an absolute name, climbs out with '..', is a symbolic or hard link, a device or
FIFO, or repeats a name - third-party archives that do this are broken or hostile either way. Members
are then read by name; one larger than MAX_MEMBER_BYTES is refused when read (a zip bomb never gets
inflated into memory).

    with ArchiveImages("data/scraped.tar.gz") as a:   # .zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz
        for name in a.names: data = a.read(name)
"""
from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .io import InputError

MAX_MEMBER_BYTES = 256 << 20
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class UnsafeArchive(InputError):
    pass


class DamagedArchive(InputError):
    """A truncated or corrupt archive whose member listing cannot be read."""


class UnreadableMember(OSError):
    """A member that cannot be read (bad CRC, encrypted, unsupported compression, truncated stream): its
    image is rejected with this reason, the rest of the archive is still read."""


class MemberTooLarge(UnreadableMember):
    pass


def is_archive(path) -> bool:
    name = Path(path).name.lower()
    return Path(path).is_file() and name.endswith(ARCHIVE_SUFFIXES)


def check_member_name(archive, name: str) -> None:
    """Refuse absolute names, drive letters, backslash paths and any '..' component."""
    p = PurePosixPath(name)
    if (not name or p.is_absolute() or "\\" in name or (p.parts and ":" in p.parts[0])
            or ".." in p.parts or "\0" in name):
        raise UnsafeArchive(f"{archive}: member {name!r} would land outside the archive's folder; archive refused")


class ArchiveImages:
    """Regular files of a zip or tar archive, checked on open; read(name) -> bytes."""

    def __init__(self, path):
        self.path = Path(path)
        self._zip = self._tar = None
        try:
            self._open()
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as e:
            self.close()  # a truncated or corrupt archive (its listing cannot be read): nothing is read from it
            if isinstance(e, OSError) and e.errno is not None:
                raise  # a missing or unreadable file: the OS error names it (gzip's BadGzipFile has no errno)
            raise DamagedArchive(f"{self.path}: damaged archive, its listing cannot be read ({type(e).__name__}: {e}); "
                                 "nothing was read from it") from None
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        if self.path.name.lower().endswith(".zip"):  # by name: a tar whose last member is a zip is still a tar
            if not zipfile.is_zipfile(self.path):
                raise UnsafeArchive(f"{self.path}: not a zip archive")
            self._zip = zipfile.ZipFile(self.path)
            infos = {i.filename: i for i in self._zip.infolist()}
            if len(infos) != len(self._zip.infolist()):
                raise UnsafeArchive(f"{self.path}: a member name repeats; archive refused")
            files = {}
            for name, info in infos.items():
                check_member_name(self.path, name)
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no file type
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise UnsafeArchive(f"{self.path}: member {name!r} is a link or special file; archive refused")
                if not info.is_dir():
                    files[name] = info
        elif self.path.name.lower().endswith(ARCHIVE_SUFFIXES) and tarfile.is_tarfile(self.path):
            self._tar = tarfile.open(self.path, "r:*")
            members = self._tar.getmembers()
            files = {}
            for info in members:
                check_member_name(self.path, info.name)
                if info.issym() or info.islnk():
                    raise UnsafeArchive(f"{self.path}: member {info.name!r} is a link; archive refused")
                if not (info.isfile() or info.isdir()):
                    raise UnsafeArchive(f"{self.path}: member {info.name!r} is a device or FIFO; archive refused")
                if info.isfile():
                    if info.name in files:
                        raise UnsafeArchive(f"{self.path}: member {info.name!r} repeats; archive refused")
                    files[info.name] = info
        else:
            raise UnsafeArchive(f"{self.path}: not a zip or tar archive ({', '.join(ARCHIVE_SUFFIXES)})")
        self._files = files
        self.names = sorted(files)

    def read(self, name: str) -> bytes:
        info = self._files.get(name)
        if info is None:
            raise FileNotFoundError(f"{self.path}: no member {name!r}")
        size = info.file_size if self._zip else info.size
        if size > MAX_MEMBER_BYTES:
            raise MemberTooLarge(f"{self.path}: member {name!r} inflates to {size} bytes (limit {MAX_MEMBER_BYTES})")
        try:
            if self._zip:
                return self._zip.read(info)
            with self._tar.extractfile(info) as f:
                return f.read(MAX_MEMBER_BYTES + 1)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError, tarfile.TarError) as e:
            raise UnreadableMember(f"{self.path}: member {name!r} cannot be read ({type(e).__name__}: {e})") from e

    def close(self) -> None:
        for a in (self._zip, self._tar):
            if a is not None:
                a.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
