#!/usr/bin/env bash
# Create the SEPARATE environment of the peer library (neural-tangents on JAX) used by
# benchmarks/bench_peers.py.  It is never a dependency of jacntk.
#
#   bash benchmarks/peers/setup.sh            # -> benchmarks/peers/.venv
#   PEER_VENV=/some/dir bash benchmarks/peers/setup.sh
#
# Known working set on this machine kind: neural-tangents 0.6.5 with jax/jaxlib 0.5.3 (newer jax
# releases break neural-tangents' imports) and tf2jax 0.3.6, which pulls TensorFlow (~2.6 GB).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PEER_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet \
    "neural-tangents==0.6.5" "jax[cpu]==0.5.3" "jaxlib==0.5.3" "tf2jax==0.3.6" "numpy<2.2"
# Smoke check: the imports bench_peers.py relies on, and float64 support.
"$venv/bin/python" - <<'PY'
import jax
jax.config.update("jax_enable_x64", True)
import neural_tangents as nt
from neural_tangents import stax
_, _, kernel_fn = stax.serial(stax.Dense(8, parameterization="ntk"), stax.Erf(), stax.Dense(1))
x = jax.numpy.ones((2, 3))
print("peer venv ok: jax", jax.__version__, "neural-tangents", nt.__version__,
      kernel_fn(x, x, "ntk").dtype)
PY
