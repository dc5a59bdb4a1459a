"""Training defaults come from the recipes that the sweeps chose on validation."""
import json
import os

import pytest

from lsb_mm.training.recipes import FINE_TUNE, PLUGIN, recipe_for
from lsb_mm.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("key", sorted(PLUGIN), ids=lambda k: f"{k[0]}-{k[1]}")
def test_each_plugin_recipe_is_its_sweeps_winner(key):
    """The registry repeats the committed sweep summary it names: a re-run sweep must update both."""
    recipe = PLUGIN[key]
    with open(os.path.join(ROOT, recipe["source"]), encoding="utf-8") as f:
        sweep = json.load(f)
    winner = next(r for r in sweep["runs"] if r["name"] == sweep["winners"][key[1]])
    assert {k: winner[k] for k in ("lr", "temperature", "weight_decay")} == \
        {k: recipe[k] for k in ("lr", "temperature", "weight_decay")}
    assert sweep["settings"]["modality"] == key[0]
    assert set(sweep["winners"]) <= {h for m, h in PLUGIN if m == key[0]}  # every swept row has its recipe


def test_train_config_fills_only_what_is_not_given():
    cfg = TrainConfig(model="m", train_data="d", output="o", modality="text", head="slr", train="heads")
    assert (cfg.lr, cfg.temperature, cfg.weight_decay) == (PLUGIN[("text", "slr")]["lr"], 0.02, 0.01)
    assert cfg.defaults_from == {"recipe": "results/sweep_text.json", "filled": ["lr", "temperature", "weight_decay"]}
    cfg = TrainConfig(model="m", train_data="d", output="o", modality="text", head="slr", train="heads", lr=5e-2)
    assert cfg.lr == 5e-2 and cfg.defaults_from["filled"] == ["temperature", "weight_decay"]
    cfg = TrainConfig(model="m", train_data="d", output="o", head="slr", train="all")
    assert cfg.lr == FINE_TUNE["lr"] and cfg.defaults_from["recipe"] == "fine-tune default"
    given = TrainConfig(model="m", train_data="d", output="o", lr=1.0, temperature=0.1, weight_decay=0.0)
    assert given.defaults_from is None and (given.lr, given.temperature, given.weight_decay) == (1.0, 0.1, 0.0)
    assert recipe_for("text", "none", "heads")["source"] == "fine-tune default"  # nothing was swept for it


def test_recipes_command(capsys):
    from lsb_mm.cli import main

    assert main(["recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["modality"], r["head"]) for r in rows} >= set(PLUGIN)
    assert main(["recipes"]) == 0
    assert "| text | slr | heads |" in capsys.readouterr().out
