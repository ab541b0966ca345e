#!/usr/bin/env bash
# Stop the scheduler and workers started by cluster/start-local.sh RUNDIR (logs are kept).
#
#   bash cluster/stop-local.sh RUNDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

[ $# = 1 ] || { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
run=$1
[ -d "$run" ] || die "no such directory '$run'"
[ -e "$run/scheduler.pid" ] || compgen -G "$run/worker-*.pid" >/dev/null \
  || die "'$run' holds no cluster started by start-local.sh (no PID files)"
for f in "$run"/worker-*.pid; do
  [ -e "$f" ] && stop_pidfile "$f" distributed.cli.dask_worker
done
stop_pidfile "$run/scheduler.pid" distributed.cli.dask_scheduler
rm -f "$run/scheduler.json"
echo "stopped the cluster in $run"
