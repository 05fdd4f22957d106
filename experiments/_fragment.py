"""A docs fragment an experiment writes (``docs/generated/NAME.md``): who wrote it, an introduction, the
figure's image and the figures as a text block, written atomically."""

from __future__ import annotations

from pathlib import Path

from personavec._internal.files import atomic_path


def write_fragment(path: Path, script: str, intro: str, image: Path, alt: str, text: list[str]) -> None:
    lines = [
        f"<!-- written by {script}; rerun the script instead of editing -->",
        "",
        intro,
        "",
        f"![{alt}]({image.parent.name}/{image.name})",  # as docs/*.md, which includes it, sees it
        "",
        "```text",
        *text,
        "```",
        "",
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    print(f"wrote {path} and {image}")
