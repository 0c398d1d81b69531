"""One forked helper process for CPU-bound reading on a second core.

The child starts as a copy of the parent (``os.fork``), so it reads what the parent already
holds (a file's bytes) without copying or pickling, and starts its own preparation at once.
It then waits for one message that only the parent can write (JSON), does its work, and hands
back a JSON header and an Arrow table through an unlinked temporary file. Only JSON and Arrow
IPC cross the process boundary: nothing is pickled.

Any failure in the child (an exception, a crash, a kill) reaches the parent as
``ChildFailed`` from ``result()``; callers then do the work themselves, so a child never
decides an outcome on its own. The child leaves with ``os._exit``: no atexit handlers, no
buffered output of the parent flushed twice.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from typing import Any, Callable

import orjson
import pyarrow as pa

_HEADER_LEN = 8  # bytes of the big-endian length that precedes the JSON header
_SHM = "/dev/shm"


def _scratch_dir(expected_bytes: int) -> str | None:
    """Memory-backed when it has room (a disk file's page cache made a 70 MB hand-over 5x slower);
    containers often give /dev/shm only 64 MB, and then the default temporary folder is used."""
    try:
        free = os.statvfs(_SHM)
    except OSError:
        return None
    room = free.f_bavail * free.f_frsize
    return _SHM if os.access(_SHM, os.W_OK) and room >= 2 * expected_bytes else None


class ChildFailed(Exception):
    """The child did not deliver a result."""


class ForkedChild:
    """``prepare()`` runs in the child at once; ``work(prepared, message)`` once ``send`` is called.

    ``work`` returns ``(header, table)``: a JSON-serialisable dict and an Arrow table.
    Use as a context manager: leaving it stops the child if it is still waiting or working.
    """

    def __init__(self, prepare: Callable[[], Any], work: Callable[[Any, Any], tuple[dict, pa.Table]],
                 expected_bytes: int = 0):
        scratch = _scratch_dir(expected_bytes)  # expected_bytes: about what the child hands back
        self._message = tempfile.TemporaryFile(dir=scratch)
        self._result = tempfile.TemporaryFile(dir=scratch)
        read_end, self._go = os.pipe()
        try:
            self._pid: int | None = os.fork()
        except OSError:
            for fd in (read_end, self._go):
                os.close(fd)
            self._message.close()
            self._result.close()
            raise
        if self._pid == 0:
            os.close(self._go)
            _child(read_end, self._message.fileno(), self._result.fileno(), prepare, work)  # never returns
        os.close(read_end)

    def send(self, message: Any) -> None:
        """Hand the child its message (raises TypeError when it is not JSON-serialisable)."""
        data = orjson.dumps(message)
        os.pwrite(self._message.fileno(), len(data).to_bytes(_HEADER_LEN, "big") + data, 0)
        try:
            os.write(self._go, b"g")
        except BrokenPipeError:
            pass  # the child has already failed; result() says so

    def result(self) -> tuple[dict, pa.Table]:
        """Wait for the child; its header and table, or ChildFailed."""
        status = self._wait()
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            raise ChildFailed(f"helper process ended with status {status}")
        size = os.fstat(self._result.fileno()).st_size
        if size < _HEADER_LEN:
            raise ChildFailed("helper process left no result")
        view = mmap.mmap(self._result.fileno(), size, access=mmap.ACCESS_READ)
        n = int.from_bytes(view[:_HEADER_LEN], "big")
        header = orjson.loads(view[_HEADER_LEN:_HEADER_LEN + n])
        # Zero-copy: the table's buffers point into the mapping, which they keep alive.
        table = pa.ipc.open_stream(pa.py_buffer(view)[_HEADER_LEN + n:]).read_all()
        return header, table

    def _wait(self) -> int:
        if self._pid is None:
            raise ChildFailed("helper process already collected")
        os.close(self._go)  # a child still waiting for its message reads end-of-file and leaves
        self._go = -1
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        return status

    def close(self) -> None:
        if self._pid is not None:
            self._wait()
        self._message.close()
        self._result.close()

    def __enter__(self) -> "ForkedChild":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child(go: int, message_fd: int, result_fd: int, prepare: Callable[[], Any],
           work: Callable[[Any, Any], tuple[dict, pa.Table]]) -> None:
    code = 1
    try:
        prepared = prepare()
        if os.read(go, 1) != b"g":
            code = 0  # stopped before any work: not a failure
            return
        n = int.from_bytes(os.pread(message_fd, _HEADER_LEN, 0), "big")
        message = orjson.loads(os.pread(message_fd, n, _HEADER_LEN))
        header, table = work(prepared, message)
        data = orjson.dumps(header)
        with open(result_fd, "wb", closefd=False) as out:
            out.write(len(data).to_bytes(_HEADER_LEN, "big"))
            out.write(data)
            with pa.ipc.new_stream(pa.PythonFile(out, mode="w"), table.schema) as writer:
                writer.write_table(table)
        code = 0
    except BaseException:  # the parent redoes the work; nothing of the child's is kept
        code = 1
    finally:
        os._exit(code)
