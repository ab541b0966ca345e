#!/usr/bin/env bash
# Create a private CA and certificates for Dask TLS with mutual authentication.
#
#   bash cluster/make-certs.sh DIR [--days N] [--names host1,10.0.0.5,...]
#
# Writes into DIR (created 0700; keys 0600):
#   ca.pem, ca.key                 the CA: keep ca.key off the cluster once certificates exist
#   scheduler.pem, scheduler.key   for 'dask scheduler --tls-cert/--tls-key'
#   worker.pem, worker.key         for 'dask worker --tls-cert/--tls-key'
#   client.pem, client.key         for 'jacntk ... --tls-cert/--tls-key' (and Client(security=...))
# Every process gets '--tls-ca-file DIR/ca.pem'; a peer must present a certificate signed by this
# CA, so a client without one (or with one from another CA) is refused.
# Certificates name 127.0.0.1 and localhost plus --names (DNS names or IP addresses).
# Existing files are never overwritten: rerunning issues only what is missing from the same CA.
set -euo pipefail

die() { echo "make-certs.sh: error: $*" >&2; exit 2; }
[ $# -ge 1 ] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
dir=$1; shift
days=365; names=""
while [ $# -gt 0 ]; do
  case $1 in
    --days) days=${2:-}; shift 2 ;;
    --names) names=${2:-}; shift 2 ;;
    *) die "unknown option '$1'" ;;
  esac
done
[[ $days =~ ^[0-9]+$ ]] && [ "$days" -gt 0 ] || die "--days must be a positive integer, got '$days'"
command -v openssl >/dev/null || die "openssl not found"
[ ! -e "$dir" ] || [ -d "$dir" ] || die "'$dir' exists and is not a directory"
if [ -e "$dir/ca.pem" ] && [ ! -e "$dir/ca.key" ]; then
  missing=0
  for role in scheduler worker client; do [ -e "$dir/$role.pem" ] || missing=1; done
  [ $missing = 0 ] || die "'$dir/ca.pem' exists without ca.key: cannot issue missing certificates"
fi

san="IP:127.0.0.1,DNS:localhost"
IFS=',' read -r -a extra <<< "$names"
for n in "${extra[@]}"; do
  [ -n "$n" ] || continue
  if [[ $n =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $n == *:* ]]; then
    san="$san,IP:$n"
  elif [[ $n =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    san="$san,DNS:$n"
  else
    die "--names: '$n' is neither a host name nor an IP address"
  fi
done

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"
tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if [ ! -e "$dir/ca.pem" ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -days "$days" -subj "/CN=jacntk-dask-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>"$tmp/err" || { cat "$tmp/err" >&2; die "openssl could not create the CA"; }
  mv "$tmp/ca.key" "$dir/ca.key"; mv "$tmp/ca.pem" "$dir/ca.pem"
  echo "created $dir/ca.pem"
fi

for role in scheduler worker client; do
  [ ! -e "$dir/$role.pem" ] || continue
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$tmp/$role.key" -out "$tmp/$role.csr" -subj "/CN=jacntk-dask-$role" 2>"$tmp/err" \
    || { cat "$tmp/err" >&2; die "openssl could not create the $role key"; }
  printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" > "$tmp/$role.ext"
  openssl x509 -req -in "$tmp/$role.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -out "$tmp/$role.pem" -days "$days" -extfile "$tmp/$role.ext" 2>"$tmp/err" \
    || { cat "$tmp/err" >&2; die "openssl could not sign the $role certificate"; }
  mv "$tmp/$role.key" "$dir/$role.key"; mv "$tmp/$role.pem" "$dir/$role.pem"
  echo "created $dir/$role.pem"
done
rm -f "$dir/ca.srl"
