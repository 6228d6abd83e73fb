"""The README's `compile()` / `fit()` example runs as written."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _first_python_block(section):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    text = text[text.index(section) :]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_readme_fit_example_runs_as_written(tmp_path):
    code = _first_python_block("## Using it")
    assert "model.compile()" in code and "model.fit(" in code
    assert len(code.strip().splitlines()) <= 12
    # PyTorch starts training at once (TensorFlow traces the graph for minutes on a CPU).
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    check = "\nassert logits.shape == (8, 64, 64, 5)\nprint('README example OK')\n"
    result = subprocess.run(
        [sys.executable, "-c", code + check],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "README example OK" in result.stdout
    assert sorted(os.listdir(tmp_path / "my_segmenter")) == [
        "config.json",
        "metadata.json",
        "model.weights.h5",
    ]
