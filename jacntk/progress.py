"""Progress on stderr: the one place that decides whether progress is shown and how (tqdm).

Every long-running call takes ``progress: bool | None``: ``True`` shows a bar, ``False`` shows
nothing, ``None`` (the default) shows one when stderr is a terminal.  A bar is a single line
redrawn in place (at most every ``MIN_INTERVAL_S`` seconds): counts, rate, elapsed time, ETA
when the total is known, and the caller's postfix (e.g. the solver's residual).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

MIN_INTERVAL_S = 0.5


def wants_progress(progress: bool | None) -> bool:
    """Whether to show progress: ``progress`` if given, else whether stderr is a terminal."""
    if progress is None:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False
    return bool(progress)


class _Silent:
    """The bar of a call that shows no progress."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def set_description_str(self, text: str, refresh: bool = True) -> None:
        pass


@contextlib.contextmanager
def progress_bar(
    total: int | None, desc: str, progress: bool | None, unit: str = "it"
) -> Iterator[object]:
    """A tqdm bar on stderr (or a silent stand-in), closed on exit.

    Parameters
    ----------
    total : int or None
        Number of steps (None: unknown, e.g. iterations of a solver until it converges).
    desc : str
        Label at the start of the line ("assemble", "verify", "CG").
    progress : bool or None
        See :func:`wants_progress`.
    unit : str
        What a step is ("tile", "it").

    Yields
    ------
    An object with ``update(n)``, ``set_postfix_str(text)`` and ``set_description_str(text)``.
    """
    if not wants_progress(progress):
        yield _Silent()
        return
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        mininterval=MIN_INTERVAL_S,
        dynamic_ncols=True,
        leave=True,
    )
    try:
        yield bar
    finally:
        bar.close()
