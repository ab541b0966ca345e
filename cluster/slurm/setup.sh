#!/usr/bin/env bash
# Install what a single-node SLURM needs on Debian/Ubuntu (root): munge, slurmctld, slurmd and the
# client commands, without starting or enabling any system service.  Idempotent: ~25 s on a fresh
# Debian 12 machine (apt-get update + ~4 MB of packages), ~1 s when everything is there.
#
#   sudo bash cluster/slurm/setup.sh [--python PY]
#
# --python PY also installs dask-jobqueue into that interpreter's environment (pip).
# Then start a private SLURM with cluster/slurm/single-node.sh (tests do this themselves).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

py=""
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "option '$1' needs a value"
  case $1 in
    --python) py=$2 ;;
    *) die "unknown option '$1'" ;;
  esac
  shift 2
done

packages=(munge slurmctld slurmd slurm-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root"
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} yourself"
  # policy-rc.d: the packages must not start (system-wide) daemons; single-node.sh starts ours.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"; created_policy=1
  fi
  trap '[ $created_policy = 1 ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for c in munged slurmctld slurmd sbatch sinfo; do
  command -v "$c" >/dev/null || die "'$c' is still missing after installing ${packages[*]}"
done
if [ -n "$py" ]; then
  "$py" -m pip install -q "dask-jobqueue>=0.9" 2>&1 | grep -v '^WARNING: Location' || true
  "$py" -c "import dask_jobqueue" || die "'$py' cannot import dask_jobqueue after pip install"
fi
echo "SLURM $(slurmctld -V | awk '{print $2}') ready: sudo bash $here/single-node.sh start DIR"
