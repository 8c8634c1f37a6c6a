#!/bin/sh
# Init container of a serving pool: run the one-model fetch script for every served version, so
# each is copied and verified exactly as a dedicated model's is.
# Usage: fetch-pool.sh LIST MODEL@VERSION=sha256:DIGEST ...
#   LIST: one line per member, "MODEL MODEL_DIR MODEL_SOURCE" (where it goes, where it comes from).
# Env: as fetch-models.sh, without MODEL_SOURCE and MODEL_DIR (they come from the list).
set -eu

fail() {
  echo "fetch-pool: $*" >&2
  exit 1
}

[ "$#" -ge 2 ] || fail "usage: fetch-pool.sh LIST MODEL@VERSION=DIGEST ..."
list="$1"
shift
here=$(dirname "$0")
for spec in "$@"; do
  model="${spec%%@*}"
  [ "$model" != "$spec" ] || fail "'$spec' is not MODEL@VERSION=DIGEST"
  dir=""
  source=""
  while read -r name member_dir member_source <&3; do
    if [ "$name" = "$model" ]; then
      dir="$member_dir"
      source="$member_source"
    fi
  done 3< "$list"
  if [ -z "$dir" ] || [ -z "$source" ]; then fail "model $model is not in $list"; fi
  MODEL_DIR="$dir" MODEL_SOURCE="$source" /bin/sh "$here/@FETCH_SCRIPT@" "${spec#*@}"
done
echo "fetch-pool: $# version(s) verified"
