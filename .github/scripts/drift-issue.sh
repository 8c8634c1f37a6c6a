#!/usr/bin/env bash
# Keep one GitHub issue about drift up to date from the nightly previews (drift.yml).
# Usage: drift-issue.sh OWNER/REPO RESULTS_DIR RUN_URL   (GH_TOKEN in the environment)
# RESULTS_DIR holds, per stack, <stack>.status (clean, drifted or error) and <stack>.txt (the
# preview's output). The issue is the open one labelled `drift`:
# - a stack drifted: create it, or rewrite its body and comment that the drift persists;
# - every stack clean: close it, saying so;
# - otherwise (a preview failed, nothing drifted): leave it; drift.yml's failed job says why.
set -euo pipefail
repo="$1" results="$2" run_url="$3"
label=drift
title="Drift: deployed stacks differ from their Pulumi program"
marker='<!-- drift-report -->'
max_preview_chars=12000 # per stack; GitHub refuses an issue body over 65536 characters

drifted=() clean=() failed=()
for status_file in "$results"/*.status; do
  [ -e "$status_file" ] || continue
  stack="$(basename "$status_file" .status)"
  case "$(cat "$status_file")" in
    clean) clean+=("$stack") ;;
    drifted) drifted+=("$stack") ;;
    *) failed+=("$stack") ;;
  esac
done
if [ $((${#drifted[@]} + ${#clean[@]} + ${#failed[@]})) -eq 0 ]; then
  echo "no results in $results" >&2
  exit 1
fi

existing="$(gh issue list --repo "$repo" --label "$label" --state open --json number --jq '.[0].number // empty')"

if [ ${#drifted[@]} -eq 0 ]; then
  if [ ${#failed[@]} -eq 0 ] && [ -n "$existing" ]; then
    gh issue close "$existing" --repo "$repo" --comment "No drift in ${clean[*]} as of $run_url; closing."
    echo "closed #$existing"
  else
    echo "no drift${failed[*]:+; could not check: ${failed[*]}}; ${existing:+#$existing left as it is}"
  fi
  exit 0
fi

body="$(mktemp)"
{
  echo "$marker"
  echo "\`pulumi preview --refresh --expect-no-changes\` found changes: the clusters or cloud resources"
  echo "differ from what the program declares (a change made outside Pulumi, or a merge not yet applied)."
  echo "Review the diff, then either \`pulumi up\` the stack to restore it or change the program to match."
  echo
  echo "Last checked: $run_url"
  echo
  echo "| stack | state |"
  echo "| --- | --- |"
  for stack in "${drifted[@]}"; do echo "| $stack | **drifted** |"; done
  for stack in "${clean[@]}"; do echo "| $stack | no drift |"; done
  for stack in "${failed[@]}"; do echo "| $stack | preview failed (see the run) |"; done
  for stack in "${drifted[@]}"; do
    echo
    echo "<details><summary>$stack: pulumi preview</summary>"
    echo
    echo '```'
    tail -c "$max_preview_chars" "$results/$stack.txt" 2>/dev/null || echo "(no output)"
    echo '```'
    echo "</details>"
  done
} >"$body"

if [ -n "$existing" ]; then
  gh issue edit "$existing" --repo "$repo" --body-file "$body" >/dev/null
  gh issue comment "$existing" --repo "$repo" --body "Still drifting as of $run_url: ${drifted[*]}." >/dev/null
  echo "updated #$existing"
else
  gh label create "$label" --repo "$repo" --color D93F0B \
    --description "A deployed stack differs from its Pulumi program (drift.yml)" --force >/dev/null
  gh issue create --repo "$repo" --title "$title" --label "$label" --body-file "$body" >/dev/null
  echo "opened an issue: ${drifted[*]} drifted"
fi
