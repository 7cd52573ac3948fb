"""An output written under a temporary name in its own folder and renamed onto its name only
when complete: an interrupted or failed run leaves no file under the output's name (and no
temporary file either, unless the process is killed outright)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; on success renames it to `path` (replacing any
    file there), on any exception (KeyboardInterrupt included) removes it.

    The temporary file is in the output's folder so that the rename is atomic (same file
    system). It gets the permissions a newly created file would (mkstemp makes it 0600).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
