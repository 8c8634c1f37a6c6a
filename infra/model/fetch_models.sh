#!/bin/sh
# Init container: copy exactly the served versions of one model from the object store into
# the pod's emptyDir and verify them, so the server only ever reads checked local files.
# Usage: fetch-models.sh VERSION=sha256:DIGEST ...
# Env: MODEL_SOURCE (s3://bucket/prefix/path), MODEL_DIR (local base path),
#      S3_ENDPOINT (optional, S3-compatible stores), AWS_REGION and the usual AWS credential chain.
set -eu

checksums="@CHECKSUMS_FILE@"
marker="@COMMIT_MARKER@"
claim="@CLAIM_FILE@"

aws_s3() {
  if [ -n "${S3_ENDPOINT:-}" ]; then
    aws --endpoint-url "$S3_ENDPOINT" s3 "$@"
  else
    aws s3 "$@"
  fi
}

fail() {
  echo "fetch-models: $*" >&2
  exit 1
}

is_sha256_hex() {
  case "$1" in
    *[!0-9a-f]*) return 1 ;;
  esac
  [ "${#1}" -eq 64 ]
}

[ "$#" -gt 0 ] || fail "no versions to fetch"
for spec in "$@"; do
  version="${spec%%=*}"
  expected="${spec#*=}"
  source="$MODEL_SOURCE/$version"
  staging="$MODEL_DIR/.$version.partial"
  rm -rf "$staging"
  mkdir -p "$staging"
  # The publisher writes the commit marker last: without it the version is incomplete.
  aws_s3 cp --only-show-errors "$source/$marker" "$staging/$marker" \
    || fail "version $version is not committed: $source/$marker is missing"
  aws_s3 cp --only-show-errors --recursive "$source/" "$staging/" \
    || fail "cannot copy $source/"
  rm -f "$staging/$claim"  # the publisher's lock, not part of the model
  # A failing sha256sum inside "sha256:$(... | cut)" would leave the empty digest "sha256:" and
  # report a mismatch: hash on its own, and accept nothing but 64 hex digits. Read from stdin,
  # so the line is "<hex>  -" whatever the path (GNU sha256sum escapes names with a backslash).
  hashed=$(sha256sum < "$staging/$checksums") \
    || fail "version $version: cannot hash $source/$checksums: sha256sum failed"
  hex="${hashed%% *}"
  is_sha256_hex "$hex" \
    || fail "version $version: cannot hash $source/$checksums: sha256sum printed '$hashed', not 64 hex digits"
  actual="sha256:$hex"
  [ "$actual" = "$expected" ] \
    || fail "version $version: $source/$checksums has digest $actual, the manifest says $expected"
  (cd "$staging" && sha256sum -c --quiet "$checksums") \
    || fail "version $version: a file does not match $source/$checksums"
  # Refuse files the checksum list does not cover: they were not published.
  listed=$( (cut -d ' ' -f 3- "$staging/$checksums"; echo "$checksums"; echo "$marker") | sed 's|^\./||' | sort)
  present=$(cd "$staging" && find . -type f | sed 's|^\./||' | sort)
  [ "$listed" = "$present" ] || fail "version $version: files differ from $source/$checksums"
  rm -rf "${MODEL_DIR:?}/$version"
  mv "$staging" "$MODEL_DIR/$version"
  echo "fetch-models: version $version verified ($expected)"
done
