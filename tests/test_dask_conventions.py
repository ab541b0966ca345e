"""Dask conventions of the embedded cluster, with real processes: a script without the
``if __name__ == "__main__":`` guard gets one paragraph instead of a 200-line traceback (from the
parent's check, and from the worker's when the parent cannot see the script), and a successful
run closes without connection-error tracebacks.

Every case runs a script file in a fresh interpreter, as a user would (``python script.py``).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from jacntk.distributed import WORKER_MALLOC

TIMEOUT = 180


def _run(tmp_path, name: str, source: str) -> subprocess.CompletedProcess:
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


ASSEMBLE = textwrap.dedent(
    """
    import numpy as np

    import jacntk
    from jacntk.distributed import ClusterOptions

    X = np.random.default_rng(0).standard_normal((120, 3))
    """
)
CALL = (
    'report = jacntk.assemble(jacntk.MLP(1, "erf"), X, "store.zarr", tile=40, '
    "cluster=ClusterOptions(workers=2))"
)


@pytest.mark.parametrize(
    "body",
    [
        "x = 1\nprobe()  # HERE\n",
        'if __name__ == "__main__":\n    probe()\n',
        'def main():\n    probe()\n\nif "__main__" == __name__:\n    main()\n',
        "def main():\n    probe()\n\nmain()  # HERE\n",
        'if __name__ == "__main__":\n    pass\nfor _ in [0]:\n    probe()  # HERE\n',
    ],
    ids=["top-level", "guarded", "guarded-main-function", "unguarded-main-function", "after-guard"],
)
def test_unguarded_top_level_is_located_in_the_script(tmp_path, body):
    """The parent-side check finds the main script's top-level line on the stack and asks its
    syntax tree whether an ``if __name__ ...`` block holds it (no cluster is started); the line
    marked ``# HERE`` is the one it must report, and guarded scripts report nothing."""
    source = (
        "from jacntk.distributed import _unguarded_main_line\n\n"
        "def probe():\n    print('FOUND', _unguarded_main_line())\n\n" + body
    )
    result = _run(tmp_path, "probe.py", source)
    assert result.returncode == 0, result.stderr
    found = result.stdout.split("FOUND", 1)[1].strip()
    marked = [i for i, text in enumerate(source.splitlines(), 1) if text.endswith("# HERE")]
    if not marked:
        assert found == "None"
    else:
        assert found == repr((str(tmp_path / "probe.py"), marked[0])), found


@pytest.mark.cluster
def test_assemble_without_the_main_guard_says_so_in_a_few_lines(tmp_path):
    result = _run(tmp_path, "unguarded.py", ASSEMBLE + CALL + "\n")
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) < 30, result.stderr
    assert "__main__" in result.stderr and "unguarded.py" in result.stderr
    assert "MainGuardError" in result.stderr
    assert "Nanny failed" not in result.stderr and "bootstrapping" not in result.stderr


@pytest.mark.cluster
def test_worker_side_check_when_the_parent_cannot_see_the_script(tmp_path):
    """With the parent's check blinded (as for a script it cannot read), the workers re-running
    the script stop at once with the paragraph and the parent says the cluster could not start."""
    source = """
        import jacntk.distributed as jd

        jd._unguarded_main_line = lambda: None
        with jd.get_client(jd.ClusterOptions(workers=2)) as c:
            print(c.submit(sum, [1, 2]).result())
    """
    result = _run(tmp_path, "blind.py", source)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) < 30, result.stderr
    assert "__main__" in result.stderr
    assert "could not start its workers" in result.stderr
    assert "bootstrapping phase" not in result.stderr


@pytest.mark.cluster
def test_guarded_assemble_closes_the_cluster_quietly(tmp_path):
    """Six tiles on two worker processes; stdout has the report, stderr no traceback at all."""
    source = (
        ASSEMBLE
        + 'if __name__ == "__main__":\n    '
        + CALL
        + "\n    print('COMPLETE', report.complete, report.computed, report.workers)\n"
    )
    result = _run(tmp_path, "guarded.py", source)
    assert result.returncode == 0, result.stderr
    assert "COMPLETE True 6 2" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "CommClosedError" not in result.stderr, result.stderr
    assert "killing" not in result.stderr, result.stderr


def test_each_embedded_cluster_gets_its_own_thread_counts_and_leaves_the_environment(tmp_path):
    """Two embedded clusters in one script, 1 worker then 2: every worker has cores / workers
    Numba and OpenBLAS threads (Dask's nanny leaks its pre-spawn variables into os.environ,
    which would give the second cluster the first one's counts), and the script's own
    environment is as before."""
    run = _run(
        tmp_path,
        "layouts.py",
        """
        import os

        def counts():
            import numba, threadpoolctl
            blas = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                    if i["user_api"] == "blas"]
            return numba.get_num_threads(), max(blas), os.environ.get("MALLOC_TRIM_THRESHOLD_")

        if __name__ == "__main__":
            from jacntk.distributed import ClusterOptions, get_client

            os.environ["OPENBLAS_NUM_THREADS"] = "7"  # this process's own value
            before = dict(os.environ)
            for workers in (1, 2):
                with get_client(ClusterOptions(workers=workers)) as client:
                    print(workers, sorted(client.run(counts).values()))
            print("environment kept:", dict(os.environ) == before)
        """,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    cores = os.cpu_count() or 1
    for workers in (1, 2):
        t = max(1, cores // workers)
        trim = WORKER_MALLOC["MALLOC_TRIM_THRESHOLD_"]  # not Dask's 65536 (see WORKER_MALLOC)
        assert f"{workers} {[(t, t, trim)] * workers}" in run.stdout, run.stdout
    assert "environment kept: True" in run.stdout
