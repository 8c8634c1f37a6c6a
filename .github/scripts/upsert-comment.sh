#!/usr/bin/env bash
# Create or update the bot's own pull-request comment that starts with the plan marker.
# Usage: upsert-comment.sh OWNER/REPO PR_NUMBER BODY_FILE BOT_LOGIN   (GH_TOKEN in the environment)
# BOT_LOGIN is the login the token comments as: `github-actions[bot]` for a workflow's
# GITHUB_TOKEN. It is passed in rather than asked for, because `gh api user` (GET /user) answers
# 403 "Resource not accessible by integration" to an installation token such as GITHUB_TOKEN
# (docs.github.com, "Automatic token authentication": GITHUB_TOKEN is an installation access
# token of the GitHub Actions app; REST "Get the authenticated user" accepts user tokens only).
# Anyone may comment on a pull request, so the marker alone identifies nothing: a comment is
# ours only when its author is BOT_LOGIN too, else a planted comment would be edited by the bot
# (or a user's comment quoting the marker overwritten with the plan).
set -euo pipefail
repo="$1" pr="$2" body="$3" bot_login="${4:-}"
marker='<!-- modelctl-plan -->'
# A GitHub login is letters, digits and hyphens; an app's bot adds `[bot]`. Checked because it is
# spliced into the jq filter below (gh's --jq takes no --arg).
[[ "$bot_login" =~ ^[A-Za-z0-9-]+(\[bot\])?$ ]] || { echo "BOT_LOGIN must be a GitHub login, got '$bot_login'" >&2; exit 1; }
head -n 1 "$body" | grep -qxF "$marker" || { echo "$body does not start with $marker" >&2; exit 1; }
id=$(gh api --paginate "repos/$repo/issues/$pr/comments" \
  --jq ".[] | select(.user.login == \"$bot_login\" and (.body | startswith(\"$marker\"))) | .id" | head -n 1)
if [ -n "$id" ]; then
  gh api --method PATCH "repos/$repo/issues/comments/$id" -F "body=@$body" > /dev/null
  echo "updated comment $id"
else
  gh api --method POST "repos/$repo/issues/$pr/comments" -F "body=@$body" > /dev/null
  echo "created a comment on #$pr"
fi
