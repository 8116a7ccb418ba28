"""MkDocs hook: the site's home page is README.md, so the two never drift apart.

README.md sits beside docs/, where GitHub shows it; its links into docs/ are rewritten
to the site's pages, and its links to other files of the repository (examples, scripts)
keep their text only, since the site does not carry those files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

#: A Markdown link or image whose target is a relative path: [text](target) or ![alt](target).
_RELATIVE_LINK = re.compile(r"(!?)\[([^\]]*)\]\((?!https?://|mailto:|#)([^)\s]+)\)")


def _site_link(match: re.Match[str]) -> str:
    bang, text, target = match.groups()
    page = target.removeprefix("docs/")
    if target.startswith("docs/") and page:
        return f"{bang}[{text}]({page})"
    return text


def on_files(files: Files, config: Any) -> Files:
    readme = Path(config.config_file_path).parent / "README.md"
    content = _RELATIVE_LINK.sub(_site_link, readme.read_text(encoding="utf-8"))
    files.append(File.generated(config, "index.md", content=content))
    return files
