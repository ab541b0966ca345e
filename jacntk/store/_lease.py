"""One writer per store: a lease object next to the store, taken atomically, kept by a heartbeat.

The lease of ``<store>`` is the small JSON object ``<store>.lease`` (a sibling, so that creating or
replacing the store never touches it).  It is taken by an exclusive create (``O_EXCL`` on a local
disk, a conditional ``If-None-Match: *`` PUT on S3 through fsspec's ``"xb"`` mode), so of two
writers exactly one gets it.  The holder rewrites it every ``HEARTBEAT_S`` seconds and deletes it
when done.  A lease is *stale* when its holder ran on this host and that process is gone, or when
its heartbeat is older than ``STALE_S`` seconds; a stale lease is broken (once: the breaker first
takes a break token named after the dead writer, itself by exclusive create) and the new holder
reports whose lease it broke.

Policy (docs/architecture.md §5.7): a second writer asking for *the same* store
(same inputs, network, kind, dtype, tile) waits for the holder to finish, then resumes (finding
the tiles done); any other request fails at once with :class:`StoreBusyError` naming the
holder.  ``overwrite`` never replaces a store someone else holds.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings

from ._format import fault_point, utc_now
from ._location import StoreLocation

HEARTBEAT_S = 5.0
STALE_S = 60.0
_POLL_S = 0.5


class StoreBusyError(RuntimeError):
    """Another writer holds the store's lease."""


class LeaseLostError(RuntimeError):
    """This writer's lease was broken or replaced while it was writing."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: dict, now: float | None = None) -> bool:
    """Whether a lease's holder is dead: same host and no such process, or no heartbeat for
    ``STALE_S`` seconds (clocks of different hosts are assumed to agree to well under that)."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _pid_alive(holder["pid"]):
            return True
    beat = holder.get("heartbeat")
    return not isinstance(beat, (int, float)) or now - beat > STALE_S


def describe(holder: dict) -> str:
    """One line naming a lease's holder."""
    age = time.time() - holder.get("heartbeat", 0)
    return (
        f"writer {holder.get('writer', '?')[:12]} (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('started', '?')}, last heartbeat "
        f"{age:.0f} s ago, running: {holder.get('command', '?')})"
    )


class Lease:
    """The lease of one store held by this process (use :func:`acquire`)."""

    def __init__(self, location: StoreLocation, request: str, broke: dict | None):
        self.location = location
        self.fs, root = location.filesystem()
        self.path = root.rstrip("/") + ".lease"
        self.broke = broke  # the stale holder whose lease this one replaced, if any
        self.lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.info = {
            "writer": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": utc_now(),
            "heartbeat": time.time(),
            "command": " ".join(sys.argv)[:300],
            "request": request,
            "phase": "starting",
        }
        self._thread: threading.Thread | None = None

    # ---- raw I/O on the lease object -----------------------------------------------------

    def _create(self) -> bool:
        """Exclusive create; False if a lease exists."""
        return _create_exclusive(self.fs, self.path, self.info)

    def _rewrite(self) -> None:
        data = json.dumps(self.info).encode()
        if "://" not in self.location.url:  # local: never a half-written lease for readers
            tmp = f"{self.path}.{self.info['writer']}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.path, data)

    # ---- holding -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless the lease object is still this writer's."""
        with self._lock:
            if self.lost is None:
                holder = read_holder(self.fs, self.path)
                if holder is None or holder.get("writer") != self.info["writer"]:
                    who = "deleted" if holder is None else f"taken by {describe(holder)}"
                    self.lost = f"the lease {self.path} was {who}"
        if self.lost is not None:
            raise LeaseLostError(
                f"lost the store's lease while writing: {self.lost}; the store may now belong "
                "to another writer, so this one stops (its recorded tiles stay valid)"
            )

    def set_phase(self, phase: str) -> None:
        """Record what the holder is doing ("creating" marks a store not yet usable)."""
        self.check()
        with self._lock:
            self.info["phase"] = phase
            self.info["heartbeat"] = time.time()
            self._rewrite()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.check()
                with self._lock:
                    self.info["heartbeat"] = time.time()
                    self._rewrite()
            except LeaseLostError:
                return
            except OSError:  # a transient store error: the next beat retries
                continue

    def release(self) -> None:
        """Stop the heartbeat and delete the lease object if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = read_holder(self.fs, self.path)
        if holder is not None and holder.get("writer") == self.info["writer"]:
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create_exclusive(fs, path: str, content: dict) -> bool:
    try:
        with fs.open(path, "xb") as f:
            f.write(json.dumps(content).encode())
    except FileExistsError:
        return False
    return True


def read_holder(fs, path: str) -> dict | None:
    """The lease's content; None if there is none.  An unreadable lease (being replaced) is
    re-read a few times, then reported as held by an unknown writer."""
    for _ in range(5):
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(data)
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        time.sleep(0.05)
    return {"writer": "unknown", "heartbeat": time.time(), "command": "unreadable lease object"}


def _break(fs, path: str, holder: dict) -> bool:
    """Remove a stale lease exactly once: the breaker first takes a token named after the dead
    writer (exclusive create); a token itself older than ``STALE_S`` is from a breaker that
    died and is removed.  True if this process removed the lease."""
    token = f"{path}.break-{holder.get('writer', 'unknown')}"
    if not _create_exclusive(fs, token, {"host": socket.gethostname(), "at": time.time()}):
        try:
            info = json.loads(fs.cat_file(token))
            if time.time() - float(info.get("at", 0)) > STALE_S:
                fs.rm(token)
        except (FileNotFoundError, ValueError):
            pass
        return False
    try:
        current = read_holder(fs, path)
        if current is not None and current.get("writer") == holder.get("writer"):
            fs.rm(path)
            return True
        return False
    finally:
        try:
            fs.rm(token)
        except FileNotFoundError:
            pass


def acquire(location: StoreLocation, request: str, *, wait_seconds: float | None = None) -> Lease:
    """Take the lease of ``location`` for a writer asking for ``request`` (a settings key).

    Returns a started :class:`Lease` (heartbeat running).  ``Lease.broke`` is the stale
    holder it replaced (a warning says so), or None.

    Raises
    ------
    StoreBusyError
        A live writer holds it for another request; or for the same request, still after
        ``wait_seconds`` (default: wait while the holder is alive).
    """
    lease = Lease(location, request, None)
    fs, path = lease.fs, lease.path
    parent = path.rsplit("/", 1)[0]
    if parent and "://" not in location.url:
        os.makedirs(parent, exist_ok=True)
    t0, told = time.monotonic(), False
    while True:
        if lease._create():
            break
        holder = read_holder(fs, path)
        if holder is None:
            continue  # released between our two calls: try again
        if is_stale(holder):
            if _break(fs, path, holder):
                lease.broke = holder
                warnings.warn(
                    f"{location.url}: broke the stale lease of {describe(holder)}; it stopped "
                    f"while {holder.get('phase', '?')} the store, which is resumed or replaced",
                    stacklevel=3,
                )
            else:
                time.sleep(_POLL_S)
            continue
        same = holder.get("request") == request
        waited = time.monotonic() - t0
        if not same or (wait_seconds is not None and waited >= wait_seconds):
            raise StoreBusyError(
                f"{location.url} is being written by {describe(holder)}"
                + (
                    " for other settings"
                    if not same
                    else f" (same settings; waited {waited:.0f} s)"
                )
                + f". One writer per store: wait for it to finish, choose another store, or, "
                f"if that process is dead, re-run after {STALE_S:.0f} s without a heartbeat "
                f"(or delete {path} yourself once you are sure it is gone)"
            )
        if not told:
            print(
                f"{location.url}: waiting for {describe(holder)}, which is assembling the same "
                "store; this run resumes when it finishes",
                file=sys.stderr,
            )
            told = True
        time.sleep(_POLL_S)
    fault_point("lease")
    lease._thread = threading.Thread(target=lease._beat, name="jacntk-lease", daemon=True)
    lease._thread.start()
    return lease
