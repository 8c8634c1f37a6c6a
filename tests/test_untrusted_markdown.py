"""Manifest and pull-request text in the plan comment, the retrain report and the terminal: hostile
values change no structure (parsed with markdown-it-py, CommonMark plus GFM tables), print no
control character, and the comment stays under GitHub's size limit whatever the change."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from infra.offline import DeclaredResource, OfflineRun
from infra.spec.errors import ConfigError
from infra.spec.manifest import parse_manifest
from scripts.modelctl import contract, sinks
from scripts.modelctl.cli import main
from scripts.modelctl.comment import COMMENT_BUDGET, GITHUB_COMMENT_LIMIT
from scripts.modelctl.plan import MODEL_TYPE, plan_stack
from scripts.modelctl.report import COMMENT_MARKER, PlanReport, render_markdown, render_text
from tests.conftest import ROOT, edit_yaml
from tests.test_plan import git, plan, repo  # noqa: F401  (repo is a fixture)

MARKDOWN = MarkdownIt("commonmark").enable("table")

FORGED = "ok\n\n**prod**: no changes\n\n<!--"
HOSTILE = [
    FORGED,
    *("`" * n + " x " + "`" * n for n in range(1, 11)),
    "a | b | c",
    "\\| escaped \\",
    "<!-- hidden",
    "</details>\n\n# heading",
    "<script>alert(1)</script>",
    "&lt;b&gt; &amp; &#x3C;",
    "line\r\nbreak\rcr\u2028ls\u2029ps\x85nel",
    "\x1b[2J\x1b]0;title\x07 clear",
    "\u202eevil\u202c \u2066isolate\u2069",
    "${{ secrets.TOKEN }}",
    "```\nfence\n```",
    "~~~\n    ```",
    "[link](https://example.com) ![img](x) <https://example.com>",
    "- item\n1. item\n> quote\n---\n===",
    "x" * 20_000,
]


def benign(value: str) -> str:
    """`value` defanged: as long, its words where they were, letters only."""
    return re.sub("[^A-Za-z0-9 ]", "b", value)


def blocks(markdown: str) -> list[tuple]:
    """The block structure: every block token, and each inline token's children by type (runs
    of text merged), which is what a forged heading, table, code span or HTML would change."""
    shape = []
    for token in MARKDOWN.parse(markdown):
        if token.type == "inline":
            kinds = [c.type for c in token.children or []]
            shape.append(
                ("inline", tuple(k for i, k in enumerate(kinds) if k != "text" or kinds[i - 1 : i] != ["text"]))
            )
        elif token.type == "html_block":
            # Only the comment's own: the marker, and <details><summary>…</summary> / </details>.
            shape.append(("html_block", re.sub(r"<summary>.*</summary>", "<summary/>", token.content)))
        else:
            shape.append((token.type, token.tag, token.nesting))
    return shape


def assert_same_structure(hostile: str, benign: str) -> None:
    assert hostile.splitlines()[0] == COMMENT_MARKER
    assert blocks(hostile) == blocks(benign)
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", hostile)


# The sinks on their own ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_a_code_span_holds_any_value_whole(value):
    (paragraph,) = [t for t in MARKDOWN.parse("a " + sinks.md_code(value) + " b") if t.type == "inline"]
    kinds = [c.type for c in paragraph.children]
    assert kinds == ["text", "code_inline", "text"]
    assert paragraph.children[1].content == sinks.visible_controls(value)


@pytest.mark.parametrize("value", HOSTILE)
def test_a_table_cell_holds_any_value_whole(value):
    row = f"| {sinks.md_code(value, in_table=True)} | {sinks.md_cell(value)} |"
    tokens = MARKDOWN.parse(f"| a | b |\n| --- | --- |\n{row}\n")
    cells = [t for t in tokens if t.type == "inline"][2:]
    assert len(cells) == 2
    assert [c.type for c in cells[0].children] == ["code_inline"]
    assert cells[0].children[0].content == sinks.visible_controls(value)
    assert {c.type for c in cells[1].children} == {"text"}
    # md_text puts a word joiner after `@` and `#` (no mention, no cross-reference on GitHub).
    assert "".join(c.content for c in cells[1].children).replace("\u2060", "") == sinks.visible_controls(value)


@pytest.mark.parametrize("value", HOSTILE)
def test_a_fenced_block_holds_any_value_whole(value):
    text = f"context\n {value}\n-{value}\n+{value}\n"
    tokens = MARKDOWN.parse(sinks.md_fenced(text, "diff") + "\n\nafter\n")
    assert [t.type for t in tokens][:1] == ["fence"]
    assert tokens[0].content == sinks.terminal_document(text)
    assert [t.type for t in tokens[1:]] == ["paragraph_open", "inline", "paragraph_close"]


@pytest.mark.parametrize("value", HOSTILE)
def test_text_and_html_hold_any_value_whole(value):
    tokens = MARKDOWN.parse("- **x**: " + sinks.md_text(value) + "\n")
    inline = next(t for t in tokens if t.type == "inline")
    assert {c.type for c in inline.children} <= {"text", "strong_open", "strong_close"}
    assert inline.content.endswith(sinks.md_text(value))
    html_block = MARKDOWN.parse(f"<details><summary>{sinks.md_html_inline(value)}</summary>\n\nafter\n")
    assert [t.type for t in html_block] == ["html_block", "paragraph_open", "inline", "paragraph_close"]
    assert "<" not in sinks.md_html_inline(value) and "\n" not in sinks.md_html_inline(value)


@pytest.mark.parametrize("value", HOSTILE)
def test_a_link_goes_where_it_says_or_is_text(value):
    url = "https://github.com/o/r/actions/runs/1?" + value
    (paragraph,) = [t for t in MARKDOWN.parse("see " + sinks.md_link(value, url) + " now") if t.type == "inline"]
    kinds = [c.type for c in paragraph.children]
    assert kinds[:2] == ["text", "link_open"] and kinds[-2:] == ["link_close", "text"]
    assert set(kinds[2:-2]) <= {"text"}
    assert paragraph.children[1].attrs["href"].startswith("https://github.com/o/r/actions/runs/1?")
    assert sinks.md_link(value, "javascript:alert(1)") == sinks.md_text("javascript:alert(1)")


def test_the_terminal_sees_every_control_as_an_escape():
    assert sinks.terminal("\x1b[2J\u202eab\n\x7f") == "\\x1b[2J\\u202eab\\x0a\\x7f"
    assert sinks.terminal_document("a\n\tb\r\x1b") == "a\n\tb\\x0d\\x1b"
    assert sinks.terminal_output("a\n\tb\r\x1b[A") == "a\n\tb\r\\x1b[A"


# Every string field of the manifest ---------------------------------------------------------------


def _string_fields(schema: dict) -> dict[str, dict]:
    """Field path -> its constraints, for every string (and object key) the manifest schema has."""
    found: dict[str, dict] = {}

    def walk(node: dict, path: str, seen: tuple = ()) -> None:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                walk(schema["$defs"][name], path, (*seen, name))
            return
        for sub in node.get("anyOf", []) + node.get("oneOf", []) + node.get("allOf", []):
            walk(sub, path, seen)
        if node.get("type") == "string" or "enum" in node:
            found[path] = {k: node[k] for k in ("pattern", "enum") if k in node}
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}".lstrip("."), seen)
        for pattern, sub in node.get("patternProperties", {}).items():
            found[f"{path}.<key>"] = {"pattern": pattern}
            walk(sub, f"{path}.*", seen)
        if isinstance(node.get("additionalProperties"), dict):
            found[f"{path}.<key>"] = node.get("propertyNames", {})
            walk(node["additionalProperties"], f"{path}.*", seen)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]", seen)

    walk(schema, "")
    return found


def _set(path: str):
    """A function putting a value at `path` of an iris manifest (`*` is version 3 or prod)."""

    def setter(document: dict, value: str) -> None:
        *parents, last = path.replace("[]", "").split(".")
        node = document
        for part in parents:
            if part == "*":
                part = 3 if 3 in node else "prod" if "prod" in node else next(iter(node))
            node = node.setdefault(part, {})
        if last == "<key>":
            node[value] = copy.deepcopy(next(iter(node.values()))) if node else 1.0
        elif path.endswith("[]"):
            node[last] = [value]
        elif path == "owner":
            node[last] = f"{value}@example.com"
        else:
            node[last] = value

    return setter


SCHEMA = json.loads((ROOT / "models" / "manifest.schema.json").read_text())
STRING_FIELDS = _string_fields(SCHEMA)
# Where a manifest value is any YAML value (a default, an example request), it can be a string too.
UNTYPED_STRINGS = ["versions.*.contract.inputs.*.default"]
# Fields published with the version (in the base), the others changed by the pull request.
PUBLISHED = "versions."


def _iris() -> dict:
    return yaml.safe_load((ROOT / "models" / "iris.yaml").read_text())


def _refused(path: str, value: str) -> bool:
    document = _iris()
    _set(path)(document, value)
    if path == "promotion.metric":
        for version in document["versions"].values():
            version["metrics"][value] = 0.5
    try:
        parse_manifest(document, "models/iris.yaml", "iris")
    except ConfigError as exc:
        top = path.split(".", 1)[0]
        assert any(e.field.startswith(top) for e in exc.errors), (path, exc.errors)
        return True
    return False


def test_the_hostile_corpus_covers_every_string_field_the_schema_has():
    assert {"description", "owner", "serving.signature", "versions.*.breaking_change_acknowledged"} <= set(
        STRING_FIELDS
    )
    patterned = [p for p, rules in STRING_FIELDS.items() if "pattern" in rules or "enum" in rules]
    # A field with a pattern or a choice refuses a value with line breaks; a value it takes (`owner`
    # takes backticks and ESC: its pattern is `[^@\s]+@...`) goes into the plan test like free text.
    for path in patterned:
        assert _refused(path, FORGED), f"{path} takes {FORGED!r}"
    # Free text reaches the plan comment: the review's acknowledgement, signature and defaults.
    assert {
        "description",
        "serving.signature",
        "versions.*.breaking_change_acknowledged",
        "versions.*.contract.inputs.*.default",
    } <= set(_accepted(FORGED))


def _accepted(value: str) -> list[str]:
    return [p for p in [*STRING_FIELDS, *UNTYPED_STRINGS] if not _refused(p, value)]


def _hostile_repo(root: Path, value: str, accepted: list[str]) -> None:
    """Version 3 of iris published with a breaking contract (scores removed, an input with a
    default) acknowledged, then the pull request: prod serves it, every other string field changed;
    `value` in every `accepted` field."""

    def publish(document: dict) -> None:
        contract = document["versions"][3]["contract"]
        contract["outputs"].pop("scores")
        contract["inputs"]["unit"] = {"dtype": "string", "shape": [-1], "default": [value]}
        for path in accepted:
            if path.startswith(PUBLISHED):
                _set(path)(document, value)
        document["versions"][3]["breaking_change_acknowledged"] = value

    def change(document: dict) -> None:
        for path in accepted:
            if not path.startswith(PUBLISHED) and "example_request" not in path:
                _set(path)(document, value)
            if path == "promotion.metric":
                for version in document["versions"].values():
                    version["metrics"][value] = 0.5
        document["environments"]["prod"]["stable"] = 3

    edit_yaml(root / "models" / "iris.yaml", publish)
    git(root, "commit", "-qam", "iris 3 as published")
    edit_yaml(root / "models" / "iris.yaml", change)


def _comment(root: Path, capsys) -> str:
    code, out, err = plan(
        root,
        capsys,
        "--stack",
        "prod",
        "--base",
        "HEAD",
        "--format",
        "markdown",
        "--max-chars",
        "0",
        "--max-diff-chars",
        "0",
    )
    assert code == 0, err
    return out


# The plan comment ---------------------------------------------------------------------------------


def _manifests(value: str, accepted: list[str]) -> tuple[dict, list]:
    """(base manifests by name, head manifests) of `_hostile_repo`'s change, through the loader."""
    base, head = _iris(), _iris()
    for document in (base, head):
        contract = document["versions"][3]["contract"]
        contract["outputs"].pop("scores")
        contract["inputs"]["unit"] = {"dtype": "string", "shape": [-1], "default": [value]}
        document["versions"][3]["breaking_change_acknowledged"] = value
    for path in accepted:
        for document in (base, head) if path.startswith(PUBLISHED) else (head,):
            _set(path)(document, value)
            if path == "promotion.metric":
                for version in document["versions"].values():
                    version["metrics"][value] = 0.5
    head["environments"]["prod"]["stable"] = 3
    parse = lambda document: parse_manifest(document, "models/iris.yaml", "iris")  # noqa: E731
    return {"iris": parse(base)}, [parse(head)]


def _with(resource: DeclaredResource, value: str) -> DeclaredResource:
    """`resource` with `value` as a key and a value of its data (inputs and state alike)."""
    inputs, state = copy.deepcopy(resource.inputs), copy.deepcopy(resource.state)
    for document in (inputs, state):
        document.setdefault("data", {})[value] = value
    return dataclasses.replace(resource, inputs=inputs, state=state)


def _report(runs: dict[str, OfflineRun], value: str, accepted: list[str]) -> PlanReport:
    """A plan of prod whose every change-derived string is `value`: the base ref, the stack's name,
    a ConfigMap's data key and value (the why column's path, the YAML diff), a new resource named
    `value` (the table, the `<details>` summary), and the contract review of the manifests."""
    base = runs["prod"]
    config = next(r for r in base.resources if r.type.endswith("ConfigMap") and r.name == "iris-config")
    # Named to sort after iris-config whatever `value` is: the rows keep their order.
    created = dataclasses.replace(_with(config, value), urn=config.urn + "-" + value, name="zz" + value)
    head = OfflineRun(base.stack, [_with(r, value) if r is config else r for r in base.resources] + [created])
    base_manifests, head_manifests = _manifests(value, accepted)
    reviews = contract.review(base_manifests, head_manifests, {value: ("prod", True)})
    return PlanReport([plan_stack(value, base, head)], value, "working tree", set(), contracts=reviews)


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_no_value_changes_the_plan_comments_structure(runs, value):
    accepted = _accepted(value)
    hostile = render_markdown(_report(runs, value, accepted), diff_budget=0, budget=0)
    defanged = render_markdown(_report(runs, benign(value), accepted), diff_budget=0, budget=0)
    assert "**breaking (acknowledged)**" in hostile
    assert_same_structure(hostile, defanged)
    # And what is shown is the value itself (the base ref in the title, clipped at 200).
    title = next(t for t in MARKDOWN.parse(hostile) if t.type == "inline")
    shown = value if len(value) <= 200 else value[:200] + "…"
    assert [c.content for c in title.children if c.type == "code_inline"] == [sinks.visible_controls(shown)]
    # The summary says what the plan found, not what a value says.
    summary = [line for line in defanged.splitlines() if line.startswith(("- **", "**Blast radius:**"))]
    assert [line.replace(benign(value), sinks.md_text(value)) for line in summary] == [
        line for line in hostile.splitlines() if line.startswith(("- **", "**Blast radius:**"))
    ]


@pytest.mark.slow
@pytest.mark.parametrize("value", [FORGED, " ".join("`" * n for n in range(1, 11))], ids=["forged", "backticks"])
def test_modelctl_plan_prints_the_same_comment_structure_for_hostile_manifests(repo, capsys, value):  # noqa: F811
    """End to end: the manifests of a pull request, `modelctl plan --format markdown`."""
    accepted = _accepted(value)
    _hostile_repo(repo, value, accepted)
    hostile = _comment(repo, capsys)
    assert "**breaking (acknowledged)**" in hostile
    benign_repo = repo.parent / "benign"
    git(repo.parent, "clone", "-q", str(repo), str(benign_repo))
    git(benign_repo, "reset", "-q", "--hard", "HEAD~1")
    _hostile_repo(benign_repo, benign(value), accepted)
    defanged = _comment(benign_repo, capsys)
    assert_same_structure(hostile, defanged)
    # The summary says what the plan found, not what a value says.
    assert [line for line in hostile.splitlines() if line.startswith("- **")] == [
        line for line in defanged.splitlines() if line.startswith("- **")
    ]


# The comment's size -------------------------------------------------------------------------------


def _fleet_change(runs: dict[str, OfflineRun], copies: int) -> PlanReport:
    """What a one-line infra/ change (an annotation on every object) does to `copies` copies of
    prod's models: every model's resources update, each with its YAML diff."""
    base = runs["prod"]
    models = [r for r in base.resources if r.type == MODEL_TYPE]
    children = [r for r in base.resources if r.parent in {m.urn for m in models}]
    before, after = list(base.resources), list(base.resources)
    for index in range(copies):
        for model in models:
            copied = dataclasses.replace(model, urn=f"{model.urn}-{index}", name=f"{model.name}-{index}")
            before.append(copied)
            after.append(copied)
        for resource in children:
            copied = dataclasses.replace(
                resource,
                urn=f"{resource.urn}-{index}",
                name=f"{resource.name}-{index}",
                parent=f"{resource.parent}-{index}",
            )
            changed = copy.deepcopy(copied.inputs)
            changed.setdefault("metadata", {}).setdefault("annotations", {})["example.com/infra"] = "2"
            before.append(copied)
            after.append(dataclasses.replace(copied, inputs=changed, state=changed))
    plan = plan_stack("prod", OfflineRun("prod", before), OfflineRun("prod", after))
    return PlanReport([plan], "main", "working tree", set())


def test_a_change_to_every_model_of_a_big_fleet_stays_under_githubs_limit(runs):
    report = _fleet_change(runs, 30)
    assert len(report.blast_radius()) >= 60
    full = render_markdown(report, diff_budget=0, budget=0)
    assert len(full) > 2 * GITHUB_COMMENT_LIMIT  # what was posted before: refused by GitHub
    where = "the plan artifact and the job summary of this workflow run"
    url = "https://github.com/o/r/actions/runs/1"
    text = render_markdown(report, full_plan=where, full_plan_url=url)
    assert len(text) <= COMMENT_BUDGET < GITHUB_COMMENT_LIMIT
    assert text.splitlines()[0] == COMMENT_MARKER
    summary = [line for line in full.splitlines() if line.startswith(("- **", "**Blast radius:**"))]
    assert summary and all(line in text.splitlines() for line in summary)
    (note,) = [line for line in text.splitlines() if "Cut to stay within" in line]
    assert "YAML diffs" in note and sinks.md_text(where) in note and f"(<{url}>)" in note
    blocks(text)  # parses; and no table row, code block or details element is cut open:
    assert text.count("<details>") == text.count("</details>")
    assert all(line.endswith("|") for line in text.splitlines() if line.startswith("|"))


def test_a_huge_acknowledgement_stays_under_githubs_limit(runs):
    value = "we told everyone. " * 34_000  # 612,000 characters
    report = _report(runs, value[:-1], [])
    text = render_markdown(report)
    assert len(text) <= COMMENT_BUDGET
    assert text.splitlines()[0] == COMMENT_MARKER
    assert any(line.startswith("- **we told everyone") for line in text.splitlines())
    assert "**breaking (acknowledged)**" in text and "more characters)" in text
    assert any(line.startswith("**Blast radius:** ") for line in text.splitlines())


def test_the_cut_note_names_the_local_command_without_a_location(runs):
    text = render_markdown(_fleet_change(runs, 30))
    assert "`modelctl plan --format markdown --max-chars 0 --max-diff-chars 0` prints it all" in text
    assert len(text) <= COMMENT_BUDGET
    # Diffs go first, tables last: the resource tables of the first models are all there.
    assert "| resource | operation | why |" in text


def test_max_diff_chars_still_bounds_the_diffs_alone(runs):
    report = _fleet_change(runs, 2)
    every = render_markdown(report, diff_budget=0, budget=0)
    some = render_markdown(report, diff_budget=2_000, budget=0)
    assert every.count("<details>") > some.count("<details>") > 0
    assert "YAML diffs left out" in some and "Cut to stay within" not in every


# The terminal -------------------------------------------------------------------------------------


CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_status_and_plan_print_no_control_character(repo, capsys):  # noqa: F811
    value = "\x1b[2J\x1b]0;owned\x07\u202eevil\r\nfake line\x9b31m"
    accepted = _accepted(value)
    assert "description" in accepted
    _hostile_repo(repo, value, accepted)
    # `owner` refuses controls (a plain address: test_untrusted_values.py); free text takes them.
    assert main(["--root", str(repo), "status"]) == 0
    out, err = capsys.readouterr()
    assert not CONTROLS.search(out + err)
    assert "\\x1b[2J" in out and "\\x1b]0;owned" in out and "fake line" in out and "\nfake line" not in out
    code, out, err = plan(repo, capsys, "--stack", "prod", "--base", "HEAD")
    assert code == 0, err
    assert not CONTROLS.search(out + err)
    assert "acknowledged: \\x1b[2J" in out
    assert not CONTROLS.search(render_text(PlanReport([], None, "x")))


def test_manifest_text_mentions_nobody_and_references_nothing():
    # GitHub makes `@login` a mention and `#12` a cross-reference outside code; a word joiner
    # after each keeps a manifest value from notifying people or backlinking issues.
    text = sinks.md_text("ping @octocat about #12 and org/repo#3")
    assert "@octocat" not in text and "#12" not in text and "#3" not in text
    assert text.replace("\u2060", "").replace("\\", "") == "ping @octocat about #12 and org/repo#3"
