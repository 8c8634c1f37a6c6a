#!/usr/bin/env bash
# Create or update the one pull-request comment that starts with the plan marker.
# Usage: upsert-comment.sh OWNER/REPO PR_NUMBER BODY_FILE   (GH_TOKEN in the environment)
set -euo pipefail
repo="$1" pr="$2" body="$3"
marker='<!-- modelctl-plan -->'
head -n 1 "$body" | grep -qxF "$marker" || { echo "$body does not start with $marker" >&2; exit 1; }
id=$(gh api --paginate "repos/$repo/issues/$pr/comments" \
  --jq ".[] | select(.body | startswith(\"$marker\")) | .id" | head -n 1)
if [ -n "$id" ]; then
  gh api --method PATCH "repos/$repo/issues/comments/$id" -F "body=@$body" > /dev/null
  echo "updated comment $id"
else
  gh api --method POST "repos/$repo/issues/$pr/comments" -F "body=@$body" > /dev/null
  echo "created a comment on #$pr"
fi
