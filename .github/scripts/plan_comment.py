"""The plan comment's body as posted: a trusted header over the untrusted plan the preview run made.

Run by preview-comment.yml from the default branch's checkout (standard library only, nothing of
the pull request's is imported or run). The plan (`plan.md`) was written by the pull request's
own code, so its escaping (scripts/modelctl/sinks.py) protects it only while that code is the
reviewed one: a pull request that edits `infra/`, `scripts/`, `policy/` or the requirements can
make the plan say anything. This header is the part of the comment the pull request cannot
write: which files outside `models/` and `stacks/` it changes (from GitHub's API, not from the
artifact), a link to the run's full plan, and whether the body had to be cut to fit.

Usage: plan_comment.py PLAN_MD CHANGED_FILES_LIST CHANGED_FILES_COUNT RUN_URL > BODY
"""

from __future__ import annotations

import sys
from pathlib import Path

# The default branch's own sinks (standard library only): one escaping function per sink.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from scripts.modelctl.sinks import md_code

MARKER = "<!-- modelctl-plan -->"
# GitHub refuses an issue comment body over 65,536 characters ("Body is too long (maximum is
# 65536 characters)", the REST API's 422 for POST /repos/{owner}/{repo}/issues/{n}/comments).
# The header and the cut note take a few thousand; the plan gets the rest.
GITHUB_COMMENT_LIMIT = 65_536
BODY_BUDGET = 60_000
# Only these change nothing the plan's code does: manifests and stack files are data, which the
# reviewed code escapes for the comment.
DATA_PREFIXES = ("models/", "stacks/")
SHOWN_FILES = 20
# The artifact is untrusted: read a bounded amount (a plan may be larger than the budget, never
# unboundedly so).
READ_LIMIT = 4 * BODY_BUDGET


def code_changes(changed: list[str]) -> list[str]:
    """The changed files that are not manifests or stack files."""
    return [path for path in changed if not path.startswith(DATA_PREFIXES)]


def cut(plan: str, budget: int = BODY_BUDGET) -> tuple[str, bool]:
    """The plan within `budget` characters, cut at a line; True when something was cut."""
    if len(plan) <= budget:
        return plan, False
    kept = plan[:budget]
    return kept[: kept.rfind("\n") + 1], True


def body(plan: str, changed: list[str], changed_count: int, run_url: str) -> str:
    """The comment: marker, trusted header, then the plan without its own marker line."""
    lines = plan.splitlines(keepends=True)
    if lines and lines[0].strip() == MARKER:
        lines = lines[1:]
    plan, was_cut = cut("".join(lines))
    header = [MARKER]
    others = code_changes(changed)
    unlisted = max(changed_count - len(changed), 0)
    if others or unlisted:
        header.append("> [!CAUTION]")
        header.append(
            f"> This pull request changes {len(others) + unlisted} file(s) outside `models/` and `stacks/`, "
            "among them code that computes this plan. The plan below was written by that code and can "
            "say anything: review the code diff, not only this plan."
        )
        header.append(">")
        header += [f"> - {md_code(path)}" for path in others[:SHOWN_FILES]]
        if len(others) > SHOWN_FILES or unlisted:
            header.append(f"> - and {len(others) - min(len(others), SHOWN_FILES) + unlisted} more")
        header.append("")
    if was_cut:
        header.append(
            f"_The plan was cut to {BODY_BUDGET:,} characters to fit GitHub's comment limit; "
            f"the whole plan is `plan-full.md` in the run's `offline-plan` artifact: {run_url}_"
        )
    else:
        header.append(f"_Full plan: `plan-full.md` in the run's `offline-plan` artifact: {run_url}_")
    # A blank line and a thematic break end every block the header opened before the plan starts.
    header += ["", "---", ""]
    return "\n".join(header) + "\n" + plan


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    plan_path, changed_path, count, run_url = argv[1:]
    with open(plan_path, encoding="utf-8", errors="replace") as file:
        plan = file.read(READ_LIMIT)
    changed = Path(changed_path).read_text(encoding="utf-8", errors="replace").splitlines()
    if not run_url.startswith("https://") or any(ch.isspace() or ch in "()[]<>" for ch in run_url):
        print(f"not a run URL: {run_url!r}", file=sys.stderr)
        return 2
    text = body(plan, [c for c in changed if c], int(count) if count.isdigit() else 0, run_url)
    assert len(text) < GITHUB_COMMENT_LIMIT
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
