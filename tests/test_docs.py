"""The docs' examples run: every ```python block of README.md and docs/*.md, and docs/api.md is current.

Each page's blocks run in order in one namespace (a page reads like a notebook), in a child process
so that nothing a page does (registering a backend, setting torch options) leaks into other tests.
A block whose text contains `# needs: cuda` is skipped without CUDA.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Runs in the child: exec the blocks in one namespace; on failure name the page line of the block.
_RUNNER = """
import json, sys, traceback
page, blocks = json.load(sys.stdin)
ns = {"__name__": "__docs__"}
for line, code in blocks:
    try:
        exec(compile(code, f"{page}:{line}", "exec"), ns)
    except BaseException:
        print(f"block at {page}:{line} failed:\\n{code}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def blocks(page: Path) -> list:
    text = page.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        code = m.group(1)
        if "# needs: cuda" in code and not torch.cuda.is_available():
            continue
        out.append((text.count("\n", 0, m.start()) + 2, code))
    return out


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run(page):
    bs = blocks(page)
    if not bs:
        pytest.skip("no python blocks")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps([str(page.relative_to(ROOT)), bs]),
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


def test_every_page_has_examples():
    for name in ("guide.md", "api.md", "how_it_works.md"):
        assert blocks(ROOT / "docs" / name), f"docs/{name} has no python example"


def test_api_md_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
