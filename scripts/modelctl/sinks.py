"""Untrusted text (manifests, pull requests) escaped for each place it is written: markdown, HTML,
terminals, shell command lines."""

from __future__ import annotations

import html
import re
import shlex
import string
from urllib.parse import quote, urlsplit

# Specifications cited: CommonMark 0.31.2 (https://spec.commonmark.org/0.31.2/), whose section
# numbers are used below, and GitHub Flavored Markdown 0.29 (https://github.github.com/gfm/), which
# adds tables (§4.10) to it; GitHub renders comments with cmark-gfm, its reference implementation.

# C0 and C1 controls and DEL (ECMA-48 controls: ESC starts a terminal escape sequence, CR
# rewrites a line), the line and paragraph separators U+2028/U+2029, and the bidi embeddings,
# overrides and isolates U+202A-202E and U+2066-2069 ("Trojan Source", CVE-2021-42574), which
# make a terminal or a browser show text in another order than it is read.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_LINES_AND_CR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# CommonMark 0.31.2 §2.4 (Backslash escapes): "Any ASCII punctuation character may be
# backslash-escaped", and the escaped character is then literal text: it can start no emphasis,
# link, heading, list, block quote, HTML tag (`<`), entity (`&`, §2.5) or table cell (`|`).
_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")
_BACKTICK_RUN = re.compile("`+")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible_controls(text: str) -> str:
    """`text` with every control character (newlines included) and bidi override as a visible
    `\\x1b`/`\\u202e`-style escape: one line, shown in the order it is stored."""
    return _CONTROLS.sub(_visible, text)


def terminal(text: object) -> str:
    """One value for a terminal line: nothing in it moves the cursor, clears the screen,
    sets a title, starts a new line or reorders what follows."""
    return visible_controls(str(text))


def terminal_document(text: str) -> str:
    """A whole document for a terminal: its line breaks and tabs kept, every other control escaped."""
    return _CONTROLS_BUT_LINES.sub(_visible, text)


def terminal_output(text: str) -> str:
    """What a command writes to its terminal, as a last layer under the per-value `terminal`: line
    breaks, tabs and carriage returns kept (a progress bar, tqdm's in `modelctl publish`, redraws
    its line with CR), every other control (ESC first) escaped."""
    return _CONTROLS_BUT_LINES_AND_CR.sub(_visible, text)


def md_text(text: object) -> str:
    """Literal text inside a markdown paragraph, heading, list item or blockquote line.

    Every ASCII punctuation character is backslash-escaped (§2.4), so no inline construct and
    no `<tag>`/`&entity;` starts from it; every control character and U+2028 is shown as an
    escape, so no line ending (§2.1: LF, CR or CR LF) can start a block of its own.

    GitHub also turns `@login` into a mention (a notification to that user) and `#123` or
    `owner/repo#123` into a cross-reference (a backlink on that issue) in comments, outside code
    ("Basic writing and formatting syntax", "Mentioning people and teams", "Referencing issues and
    pull requests"); a word joiner (U+2060, invisible, no width) after each `@` and `#` keeps a
    manifest value from doing either. Not verified against GitHub's renderer here."""
    return _PUNCTUATION.sub(r"\\\1", visible_controls(str(text))).replace("@", "@\u2060").replace("#", "#\u2060")


def md_cell(text: object) -> str:
    """Literal text in a GFM table cell. md_text already escapes `|` as `\\|`, which is how GFM
    0.29 §4.10 (Tables) puts a pipe in a cell; and a cell ends at the line's end, which md_text
    leaves none of."""
    return md_text(text)


def md_code(text: object, in_table: bool = False) -> str:
    """`text` as a code span that nothing in it can close or widen.

    CommonMark §6.1 (Code spans): a span opened by a backtick string of length n ends at the
    next backtick string of exactly length n, so the fence is one longer than the content's
    longest run; one leading and one trailing space are stripped when both are present, so a
    content that starts or ends with a backtick (which would join the fence) or with spaces on
    both sides is padded with one space each side, which is what gets stripped. Controls are shown as
    escapes, since a line ending inside a table row would end the row. An empty value is one space
    (`` is a backtick string, not an empty span). In a table (`in_table`),
    GFM §4.10 splits cells before inline parsing, "including inside other inline spans", so
    `|` is escaped as `\\|` there and GFM drops the backslash again."""
    content = visible_controls(str(text))
    fence = "`" * (max((len(run) for run in _BACKTICK_RUN.findall(content)), default=0) + 1)
    if in_table:
        content = content.replace("|", "\\|")
    if content[:1] in ("`", "") or content[-1:] == "`" or (content[0] == content[-1] == " " and content.strip(" ")):
        content = f" {content} "
    return f"{fence}{content}{fence}"


def md_fenced(text: str, info: str = "") -> str:
    """`text` (lines) as a fenced code block that no line of it can close.

    CommonMark §4.5 (Fenced code blocks): a block opened by n ≥ 3 backticks or tildes closes at
    a line of at least n of the same character, indented by at most 3 spaces; so the fence is
    backticks, one longer than the longest backtick run anywhere in the text.
    A lone CR is a line ending too (§2.1), so controls but LF and tab are shown as escapes. An
    info string after a backtick fence may hold no backtick: `info` is trusted text."""
    content = terminal_document(text).rstrip("\n")
    longest = max((len(run) for run in _BACKTICK_RUN.findall(content)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{content}\n{fence}"


# Inside a `<...>` link destination: line endings, `<`, `>` (CommonMark §6.3, "link destination"),
# and what would read differently than it links (spaces, controls, bidi overrides, backslashes).
_UNSAFE_IN_URL = re.compile("[\x00-\x20\x7f-\x9f<>\\\\`\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def md_link(text: object, url: str) -> str:
    """A markdown link to an http(s) `url` with `text` as its literal label; any other URL is
    shown as text. The destination is written between `<` and `>` (CommonMark §6.3), with
    every character that could end or disguise it percent-encoded (RFC 3986 §2.1)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return md_text(url)
    destination = _UNSAFE_IN_URL.sub(lambda match: quote(match.group(), safe=""), url)
    return f"[{md_text(text)}](<{destination}>)"


def html_text(text: object) -> str:
    """Escaped for HTML text and for double-quoted attributes alike (`&`, `<`, `>`, `"`, `'`)."""
    return html.escape(str(text), quote=True)


def md_html_inline(text: object) -> str:
    """Text inside raw HTML in markdown (e.g. `<summary>`): an HTML block (CommonMark §4.6,
    kind 6: `<details>`, `<summary>`) is passed through as it is, so backslash escapes do not
    apply; the text is HTML-escaped instead, and kept on one line, since a blank line ends the
    HTML block and returns to markdown."""
    return html_text(visible_controls(str(text)))


def shell_command(words: list[str]) -> str:
    """A command line a reader copies into a POSIX shell: each word quoted so that the shell reads
    it back as that one word (shlex.join: single quotes around anything but safe characters), and
    controls shown as escapes so the line is one line."""
    return visible_controls(shlex.join(words))
