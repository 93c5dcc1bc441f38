"""einc's data files: the Lark grammars of its two notations and the bundled .ein grammars."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
EIN_LARK = HERE / "ein.lark"
ARCH_LARK = HERE / "arch.lark"
EINSPACE = HERE / "einspace.ein"


def bundled(name: str) -> Path:
    """The path of a bundled grammar, e.g. ``bundled("einspace")``."""
    path = HERE / (name if name.endswith(".ein") else name + ".ein")
    if not path.is_file():
        raise FileNotFoundError(f'no bundled grammar "{name}"; there are: '
                                + ", ".join(sorted(p.stem for p in HERE.glob("*.ein"))))
    return path
