#!/usr/bin/env bash
# Start a Dask scheduler and N workers on this machine, in the background, for jacntk.
#
#   bash cluster/start-local.sh RUNDIR [--workers N] [--numba-threads K] [--host ADDR]
#        [--port P] [--tls CERTDIR] [--memory-limit M] [--dashboard PORT]
#        [--config FILE] [--python PY] [--timeout SECONDS]
#
# RUNDIR receives scheduler.json (give it to jacntk as --scheduler-file), PID files and logs/.
#   --host       address everything listens on; default 127.0.0.1 (loopback: nothing outside
#                this machine can connect).  Another address, e.g. 0.0.0.0 (every interface),
#                only when asked -- and then use --tls: an open scheduler runs anyone's code.
#   --workers    worker processes (default: cores / 2, at least 1), one Dask thread each,
#   --numba-threads  Numba/BLAS threads per worker (default: cores / workers).
#   --tls        directory made by cluster/make-certs.sh: TLS with mutual authentication.
#   --port       scheduler port (default 8786; 0 picks a free one).
#   --dashboard  serve the scheduler dashboard on ADDR:PORT (default: no dashboard).
#   --config     Dask config YAML (default: cluster/dask-config.yaml).
#   --python     interpreter with jacntk installed (default: $PYTHON, else python3).
# Stop with: bash cluster/stop-local.sh RUNDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

[ $# -ge 1 ] && [[ $1 != -* ]] || { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
run=$1; shift
cores=$(nproc)
workers=$(( cores / 2 > 0 ? cores / 2 : 1 )); numba=""; host=127.0.0.1; port=8786; tls=""
memory=auto; dashboard=""; config="$here/dask-config.yaml"; py=${PYTHON:-python3}; timeout=60
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "option '$1' needs a value"
  case $1 in
    --workers) workers=$2 ;;
    --numba-threads) numba=$2 ;;
    --host) host=$2 ;;
    --port) port=$2 ;;
    --tls) tls=$2 ;;
    --memory-limit) memory=$2 ;;
    --dashboard) dashboard=$2 ;;
    --config) config=$2 ;;
    --python) py=$2 ;;
    --timeout) timeout=$2 ;;
    *) die "unknown option '$1'" ;;
  esac
  shift 2
done
require_uint --workers "$workers"
[ -n "$numba" ] || numba=$(( cores / workers > 0 ? cores / workers : 1 ))
require_uint --numba-threads "$numba"
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -le 65535 ] || die "--port must be 0..65535, got '$port'"
[ -z "$dashboard" ] || { [[ $dashboard =~ ^[0-9]+$ ]] && [ "$dashboard" -le 65535 ]; } \
  || die "--dashboard must be a port 0..65535, got '$dashboard'"
require_uint --timeout "$timeout"
[[ $host =~ ^[A-Za-z0-9.:-]+$ ]] || die "--host must be an IP address or host name, got '$host'"
[ -f "$config" ] || die "--config: no such file '$config'"
command -v "$py" >/dev/null || die "--python: '$py' not found"
if [ -n "$tls" ]; then
  for f in ca.pem scheduler.pem scheduler.key worker.pem worker.key client.pem client.key; do
    [ -f "$tls/$f" ] || die "--tls: '$tls/$f' is missing (make it with cluster/make-certs.sh)"
  done
  tls=$(cd "$tls" && pwd)
fi
"$py" -c "import distributed" 2>/dev/null || die "'$py' cannot import distributed"
if [ -s "$run/scheduler.pid" ] && is_running "$(cat "$run/scheduler.pid")"; then
  die "'$run' already has a running scheduler (bash cluster/stop-local.sh $run)"
fi
case $host in
  127.*|localhost|::1) ;;
  *)
    if [ -n "$tls" ]; then risk="(TLS: only holders of a certificate from your CA can connect)"
    else risk="WITHOUT TLS: anyone who can connect can run code (use --tls)"; fi
    echo "start-local.sh: warning: listening on $host, not loopback, reachable from other" \
      "machines $risk" >&2 ;;
esac

mkdir -p "$run/logs"
run=$(cd "$run" && pwd)
rm -f "$run/scheduler.json"
export DASK_CONFIG=$config
protocol=tcp
sched_tls=(); worker_tls=(); client_tls=()
if [ -n "$tls" ]; then
  protocol=tls
  sched_tls=(--tls-ca-file "$tls/ca.pem" --tls-cert "$tls/scheduler.pem" --tls-key "$tls/scheduler.key")
  worker_tls=(--tls-ca-file "$tls/ca.pem" --tls-cert "$tls/worker.pem" --tls-key "$tls/worker.key")
  client_tls=(--tls-ca "$tls/ca.pem" --tls-cert "$tls/client.pem" --tls-key "$tls/client.key")
fi
# Dask serves HTTP (health, metrics, dashboard) even with --no-dashboard, by default on every
# interface: bind it to $host as well.
dash=(--no-dashboard --dashboard-address "$host:0")
[ -z "$dashboard" ] || dash=(--dashboard --dashboard-address "$host:$dashboard")

cleanup_on_failure() {
  echo "start-local.sh: failed; logs are in $run/logs" >&2
  bash "$here/stop-local.sh" "$run" >/dev/null 2>&1 || true
  exit 1
}

# setsid: each daemon leads its own process group, so stop-local.sh can end it with its children.
setsid "$py" -m distributed.cli.dask_scheduler --host "$host" --port "$port" \
  --protocol "$protocol" "${sched_tls[@]}" "${dash[@]}" --scheduler-file "$run/scheduler.json" \
  > "$run/logs/scheduler.log" 2>&1 < /dev/null &
echo $! > "$run/scheduler.pid"
for _ in $(seq $(( timeout * 10 ))); do
  [ -s "$run/scheduler.json" ] && break
  is_running "$(cat "$run/scheduler.pid")" || cleanup_on_failure
  sleep 0.1
done
[ -s "$run/scheduler.json" ] || cleanup_on_failure

export NUMBA_NUM_THREADS=$numba OMP_NUM_THREADS=$numba OPENBLAS_NUM_THREADS=$numba
export MKL_NUM_THREADS=$numba
for k in $(seq "$workers"); do
  setsid "$py" -m distributed.cli.dask_worker --scheduler-file "$run/scheduler.json" \
    --host "$host" --protocol "$protocol" "${worker_tls[@]}" --nthreads 1 --nworkers 1 \
    --memory-limit "$memory" --name "local-$k" --no-dashboard --dashboard-address "$host:0" \
    --death-timeout 60 \
    --local-directory "$run/worker-space" > "$run/logs/worker-$k.log" 2>&1 < /dev/null &
  echo $! > "$run/worker-$k.pid"
done

# Wait (as a client, with the client certificate under TLS) until every worker has registered.
"$py" - "$run/scheduler.json" "$workers" "$timeout" "${tls:-}" <<'PY' || cleanup_on_failure
import sys

from distributed import Client
from distributed.security import Security

scheduler_file, n, timeout, tls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
security = None
if tls:
    security = Security(
        tls_ca_file=f"{tls}/ca.pem", tls_client_cert=f"{tls}/client.pem",
        tls_client_key=f"{tls}/client.key", require_encryption=True,
    )
with Client(scheduler_file=scheduler_file, security=security, timeout=f"{timeout}s") as c:
    c.wait_for_workers(n, timeout=timeout)
    print(f"scheduler {c.scheduler.address} with {n} workers", end="")
PY
echo " (1 Dask thread + $numba Numba threads each)"
echo "run:  jacntk assemble DATA --out STORE --scheduler-file $run/scheduler.json ${client_tls[*]}"
echo "stop: bash $here/stop-local.sh $run"
