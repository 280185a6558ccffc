"""The README's Python examples run as written."""
import os
import re

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_readme_examples_run():
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["z"].shape == (128, 768) and namespace["w_n"].shape == (16, 8)
    assert namespace["scaled"].compute().shape == (100_000, 32)
    assert list(namespace["frame"].columns) == [f"x{i}" for i in range(8)]
