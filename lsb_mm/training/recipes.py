"""Training recipes: the defaults a :class:`~lsb_mm.TrainConfig` fills in when lr, temperature or
weight decay are not given.

Plug-in training (``train="heads"``: towers locked) uses the recipe that ``scripts/sweep_heads.py``
chose for the modality and head on validation data carved from the training set (never on the
test tasks); each entry names the sweep summary it comes from. Full fine-tuning (``train="all"``)
and any pair without a swept recipe use :data:`FINE_TUNE`.
"""
from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["FINE_TUNE", "PLUGIN", "recipe_for"]

FINE_TUNE: Dict[str, float] = {"lr": 1e-4, "temperature": 0.02, "weight_decay": 0.01}

# (modality, head) -> the sweep's winner; "source": the committed sweep summary it was read from
PLUGIN: Dict[Tuple[str, str], Dict[str, object]] = {
    ("text", "slr"): {"lr": 1e-3, "temperature": 0.02, "weight_decay": 0.01, "source": "results/sweep_text.json"},
    ("text", "llr"): {"lr": 3e-4, "temperature": 0.02, "weight_decay": 0.01, "source": "results/sweep_text.json"},
    ("text", "clr"): {"lr": 3e-4, "temperature": 0.02, "weight_decay": 0.01, "source": "results/sweep_text.json"},
    ("text", "adapter"): {"lr": 3e-4, "temperature": 0.02, "weight_decay": 0.01, "source": "results/sweep_text.json"},
    # image -> image on a dual encoder's image tower (Tux Paint): lr trains the projection and the head
    ("image", "none"): {"lr": 1e-4, "temperature": 0.05, "weight_decay": 0.01, "source": "results/sweep_image-tuxpaint.json"},
    ("image", "slr"): {"lr": 1e-4, "temperature": 0.05, "weight_decay": 0.01, "source": "results/sweep_image-tuxpaint.json"},
    ("image", "llr"): {"lr": 1e-4, "temperature": 0.05, "weight_decay": 0.01, "source": "results/sweep_image-tuxpaint.json"},
    ("image", "clr"): {"lr": 1e-4, "temperature": 0.05, "weight_decay": 0.01, "source": "results/sweep_image-tuxpaint.json"},
    ("image", "adapter"): {"lr": 3e-5, "temperature": 0.05, "weight_decay": 0.01,
                           "source": "results/sweep_image-tuxpaint.json"},
    # text -> image on a dual encoder (Tux Paint captions -> stamps): lr trains both projections and the heads
    ("cross", "none"): {"lr": 3e-3, "temperature": 0.02, "weight_decay": 0.01, "source": "results/sweep_cross.json"},
    ("cross", "slr"): {"lr": 3e-3, "temperature": 0.02, "weight_decay": 0.01, "source": "results/sweep_cross.json"},
    ("cross", "llr"): {"lr": 1e-2, "temperature": 0.02, "weight_decay": 0.01, "source": "results/sweep_cross.json"},
    ("cross", "clr"): {"lr": 1e-3, "temperature": 0.02, "weight_decay": 0.01, "source": "results/sweep_cross.json"},
    ("cross", "adapter"): {"lr": 1e-2, "temperature": 0.02, "weight_decay": 0.01, "source": "results/sweep_cross.json"},
}


def recipe_for(modality: str, head: str, train: str) -> Dict[str, object]:
    """``{"lr", "temperature", "weight_decay", "source"}`` for a run: the swept plug-in recipe of
    ``(modality, head)`` when ``train == "heads"`` and there is one, else :data:`FINE_TUNE`."""
    if train == "heads" and (modality, head) in PLUGIN:
        return dict(PLUGIN[(modality, head)])
    return {**FINE_TUNE, "source": "fine-tune default"}
