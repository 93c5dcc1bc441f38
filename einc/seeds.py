"""The bundled seed architectures, by name: what ``einc search --seeds NAME`` means.

The canonical copies ship inside the package (``einc/grammar/seeds/*.arch``, package data);
``examples/`` holds the same files for reading and for ``--seeds examples/X.arch`` (a test
keeps the two identical). Names are the file stems:

* ``resnet18``, ``vit``: the published einspace seeds (einc's and the published code's agree).
* ``wrn16_4_published``, ``mixer_published``: the published code's WRN-16-4 (norm and relu
  after the add, no norm on the shortcut; 2,748,576 backbone parameters at 3x64x64) and
  MLP-Mixer (one residual block per layer: norm, token mixing, channel mixing; 6,472,192).
* ``wrn16_4``, ``mixer``: einc's textbook versions (norm on the shortcut; two residual
  blocks per Mixer layer).
* ``resnet_small``: the small ResNet of the digits demo.
* ``mix``: the paper's RE(Mix) seeds, all four published ones: resnet18, wrn16_4_published,
  vit, mixer_published.
"""

from __future__ import annotations

from .errors import EinError

MIX = ("resnet18", "wrn16_4_published", "vit", "mixer_published")
GROUPS = {"mix": MIX}


class SeedError(EinError):
    """An unknown seed name."""


def _dir():
    from .grammar import HERE

    return HERE / "seeds"


def seed_names() -> tuple[str, ...]:
    """Every name ``named_seeds`` accepts: the bundled files' stems and the groups."""
    return tuple(sorted(p.stem for p in _dir().glob("*.arch"))) + tuple(GROUPS)


def named_seeds(name: str) -> tuple[tuple[str, str], ...]:
    """``(name, architecture text)`` pairs for a seed or group name: ``"mix"`` gives the four
    published seeds; ``"resnet18"`` gives one pair. Unknown names raise ``SeedError``."""
    names = GROUPS.get(name, (name,))
    out = []
    for n in names:
        path = _dir() / f"{n}.arch"
        if not n.replace("_", "").isalnum() or not path.is_file():
            raise SeedError(f'seed "{name}": error: no bundled seed of that name; there are: '
                            + ", ".join(seed_names()))
        out.append((n, path.read_text(encoding="utf-8").strip()))
    return tuple(out)
