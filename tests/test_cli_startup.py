"""``import lsb_mm`` and every ``lsb-mm ... --help`` load no torch (nor any other heavy library)."""
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "open_clip", "timm", "faiss", "bm25s", "sklearn")

PROBE = """
import argparse, json, sys
import lsb_mm
from lsb_mm.cli import build_parser, main
sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
for argv in [["--help"]] + [[c, "--help"] for c in sub.choices]:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
print(json.dumps({"commands": sorted(sub.choices),
                  "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(%r))}))
""" % (HEAVY,)


def test_help_of_every_command_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert {"train", "eval", "index", "search", "encode", "demo"} <= set(got["commands"])
    assert got["heavy"] == []


def test_the_package_facade_loads_on_first_use():
    code = ("import sys, lsb_mm; before = 'torch' in sys.modules; f = lsb_mm.create_model; "
            "print(before, 'torch' in sys.modules, f.__module__, 'TrainConfig' in dir(lsb_mm))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "lsb_mm.models.factory", "True"]
    import lsb_mm

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lsb_mm.nope
    assert all(hasattr(lsb_mm, name) for name in lsb_mm.__all__)


def test_the_cli_names_match_the_registries():
    from lsb_mm.models.encoders import hf_backbone
    from lsb_mm.models.heads import HEADS
    from lsb_mm.names import HEAD_KINDS, POOLINGS

    builtin = {k for k, cls in HEADS.items() if cls.__module__ == "lsb_mm.models.heads"}
    assert set(HEAD_KINDS) == builtin
    assert hf_backbone.POOLINGS is POOLINGS
