# Shell helpers shared by the scripts in cluster/ (sourced, not run).

# die MESSAGE: print "SCRIPT: error: MESSAGE" and exit 2.
die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# require_uint NAME VALUE: VALUE must be a positive integer.
require_uint() {
  [[ $2 =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] || die "$1 must be a positive integer, got '$2'"
}

# is_running PID: the process exists and is not a zombie (an orphan's zombie may linger when
# PID 1 does not reap, e.g. in containers).
is_running() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

# stop_pidfile FILE PATTERN: stop the process whose PID is in FILE -- only if its command line
# contains PATTERN (a stale PID may belong to someone else by now).  TERM to its process group
# (or the process), up to 10 s, then KILL; FILE is removed.
stop_pidfile() {
  local file=$1 pattern=$2 pid target
  [ -s "$file" ] || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  if [[ $pid =~ ^[0-9]+$ ]] && is_running "$pid" \
      && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"; then
    target=$pid
    [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ] && target=-$pid
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 100); do is_running "$pid" || break; sleep 0.1; done
    kill -KILL -- "$target" 2>/dev/null || true
  fi
  rm -f "$file"
}
