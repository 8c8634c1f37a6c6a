"""A markdown comment kept within a size budget: blocks kept in priority order, the rest cut whole, with a note."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from scripts.modelctl import sinks

# GitHub refuses an issue or pull-request comment whose body is over 65,536 characters
# ("Body is too long (maximum is 65536 characters)", the REST API's 422 on
# POST /repos/{owner}/{repo}/issues/{issue_number}/comments); the budget leaves room for what a
# workflow may add around the plan.
GITHUB_COMMENT_LIMIT = 65_536
COMMENT_BUDGET = 60_000
# Kept free for the note saying what was cut, whatever its length (its location text is clipped).
NOTE_RESERVE = 1_200
NOTE_LOCATION_LIMIT = 600


@dataclass
class Block:
    """Lines that are kept or cut together (a heading with its paragraph, a `<details>` element,
    a code block), followed by `rows` that may be cut after any one (a table's rows; its header
    is in `lines`, and goes when no row fits). `kind` names it in the cut note; `group` counts it
    against a budget of its own as well (the YAML diffs' --max-diff-chars)."""

    lines: list[str]
    priority: int
    kind: str = ""
    rows: list[str] = field(default_factory=list)
    group: str | None = None
    note_here: bool = False  # the cut note goes after this block

    def size(self, rows: int) -> int:
        # Each line with its line break, and the blank line that ends the block.
        return sum(len(line) + 1 for line in self.lines) + sum(len(row) + 1 for row in self.rows[:rows]) + 1


def _plural(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def assemble(
    blocks: Sequence[Block],
    budget: int = COMMENT_BUDGET,
    group_budgets: dict[str, int] | None = None,
    full_plan: str | None = None,
    local_command: str = "",
    full_plan_url: str | None = None,
) -> str:
    """The blocks in their order, those that fit in `budget` characters (0: no limit) chosen by
    priority (lowest first; in order within one priority), each cut whole, a table after a row.
    What is cut is said in one note after the block marked `note_here` (else at the end), with
    where the full text is: `full_plan` (untrusted text, escaped) and `full_plan_url` (a link, http(s)
    only), else `local_command`."""
    unlimited = budget <= 0
    remaining = budget - NOTE_RESERVE
    groups = {name: limit for name, limit in (group_budgets or {}).items() if limit > 0}
    kept_rows: dict[int, int] = {}
    cut: Counter[str] = Counter()
    cut_rows: Counter[str] = Counter()
    for priority in sorted({b.priority for b in blocks}):
        for index, block in enumerate(blocks):
            if block.priority != priority:
                continue
            rows = len(block.rows)
            room = remaining if not unlimited else None
            if block.group in groups:
                room = groups[block.group] if room is None else min(room, groups[block.group])
            if room is not None:
                if block.size(0) + (len(block.rows[0]) + 1 if rows else 0) > room:
                    cut[block.kind] += 1
                    continue
                rows = 0
                while rows < len(block.rows) and block.size(rows + 1) <= room:
                    rows += 1
                if rows < len(block.rows):
                    cut_rows[block.kind] += len(block.rows) - rows
                remaining -= block.size(rows)
                if block.group in groups:
                    groups[block.group] -= block.size(rows)
            kept_rows[index] = rows
    out: list[str] = []
    note = _cut_note(cut, cut_rows, full_plan, local_command, full_plan_url)
    marked = any(b.note_here for i, b in enumerate(blocks) if i in kept_rows)
    for index, block in enumerate(blocks):
        if index in kept_rows:
            out += block.lines + block.rows[: kept_rows[index]] + [""]
            if note and block.note_here:
                out += [note, ""]
    if note and not marked:
        out += [note, ""]
    return "\n".join(out[:-1] if out and out[-1] == "" else out) + "\n"


def _cut_note(
    cut: Counter[str], cut_rows: Counter[str], full_plan: str | None, local_command: str, url: str | None
) -> str:
    if not cut and not cut_rows:
        return ""
    parts = [_plural(count, kind) for kind, count in sorted(cut.items())]
    parts += [f"{_plural(count, 'row')} of {kind}s" for kind, count in sorted(cut_rows.items())]
    if full_plan or url:
        where = sinks.md_text((full_plan or "")[:NOTE_LOCATION_LIMIT])
        if url:
            link = sinks.md_link(url[:NOTE_LOCATION_LIMIT], url[:NOTE_LOCATION_LIMIT])
            where = f"{where} ({link})" if where else link
    else:
        where = f"`{local_command}` prints it all" if local_command else "not kept"
    return (
        f"> [!NOTE]\n> **Cut to stay within GitHub's {GITHUB_COMMENT_LIMIT:,}-character comment limit:** "
        f"{', '.join(parts)} left out. The full plan: {where}."
    )
