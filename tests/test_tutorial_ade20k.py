"""The ADE20K tutorial's smoke run on a tiny generated `ADEChallengeData2016` folder."""

import re

from test_data_segmentation import write_ade20k_tree
from tutorials import run_tutorial


def test_tutorial_smoke_run(tmp_path):
    tree = tmp_path / "ADEChallengeData2016"
    write_ade20k_tree(str(tree), {"training": 4, "validation": 3})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run_tutorial("ade20k_recipe.py", run_dir, env={"ADE20K_DIR": str(tree)})

    out = result.stdout
    # The loader read the folder: masks of the generated size, classes named.
    assert "First validation image: (48, 64, 3), mask (48, 64)" in out, out[-3000:]
    assert "Classes in its mask:" in out
    # The recipe's weight-decay rule, LayerNorms only, printed for the first block.
    assert re.search(r"m0_branch0_block0/attn_norm/gamma\s+exempt", out), out[-3000:]
    assert re.search(r"m0_branch0_block0/attn/norm/gamma\s+decays", out), out[-3000:]
    # Both evaluations ran and printed their mean IoU.
    for mode in ("whole", "slide"):
        assert re.search(rf"{mode}: mIoU \d\.\d{{4}}", out), out[-3000:]
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert "ade20k_overlays.png" in pngs and "ade20k_learning_rate.png" in pngs, pngs
    assert (run_dir / "hrvit_b1_ade20k_trained" / "config.json").is_file()
