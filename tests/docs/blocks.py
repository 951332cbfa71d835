"""Find the fenced code blocks of the documentation pages and how each must be treated.

Policy (enforced by `test_code_blocks.py`):

- ```python blocks run, in page order, sharing one namespace per page.
- A block preceded by `<!-- not-runnable: REASON -->` (blank lines allowed in between) is not
  run; REASON must be non-empty. Shell commands that train for minutes are marked this way.
- Blocks in a data or output language (`text`, `yaml`, `json`, `csv`) are not code: they need
  no marker.
- Any other block (`bash`, no language, ...) must carry the marker, so that no runnable-looking
  block goes untested silently.
"""

import re
from dataclasses import dataclass
from pathlib import Path

DATA_LANGUAGES = {"text", "yaml", "json", "csv"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
MARKER = re.compile(r"<!--\s*not-runnable:(?P<reason>.*?)-->", re.S)


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip_reason: str | None  # None: no marker; "" : a marker without a reason

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of one Markdown page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        language = match["info"].strip().split(" ")[0].lstrip(".").lower()
        body, j = [], i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise ValueError(f"{page}:{i + 1}: code fence {fence!r} is never closed")
        # The marker is the last non-blank text before the fence.
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        reason = None
        if k >= 0:
            marker = MARKER.search(lines[k])
            if marker:
                reason = marker["reason"].strip()
        blocks.append(Block(page, i + 1, language, "\n".join(body) + "\n", reason))
        i = j + 1
    return blocks
