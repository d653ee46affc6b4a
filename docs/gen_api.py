"""Generate docs/api.md from the docstrings and signatures of lambdaconv's public API.

    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 if docs/api.md is not what the code says (CI: tests/test_docs.py)

The page is a pure function of the code (no dates, no machine-dependent values), so that the
check is exact: change a docstring, run this, commit both.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import lambdaconv as lc  # noqa: E402
from lambdaconv import backends, bench  # noqa: E402
from lambdaconv.backends import registry  # noqa: E402

API_MD = ROOT / "docs" / "api.md"


def _doc(obj) -> str:
    """The docstring as markdown: the summary line as prose, the rest as written (fenced as text when
    it has indented lines, which markdown would reflow), and doctest examples as python blocks with
    their expected output as comments, so that tests/test_docs.py runs them."""
    doc = inspect.getdoc(obj) or "(no docstring)"
    summary, _, rest = doc.partition("\n")
    out, text, code = [summary, ""], [], []

    def flush_text():
        body = "\n".join(text).strip("\n")
        if body:
            indented = any(line.startswith(" ") for line in body.splitlines())
            out.extend(["```text", body, "```", ""] if indented else [body, ""])
        text.clear()

    def flush_code():
        if code:
            out.extend(["```python"] + code + ["```", ""])
        code.clear()

    for line in rest.splitlines():
        if line.startswith((">>> ", "... ")):
            flush_text()
            code.append(line[4:])
        elif code and line.strip():
            code.append("# -> " + line)  # the doctest's expected output
        else:
            flush_code()
            text.append(line)
    flush_code()
    flush_text()
    return "\n".join(out).rstrip()


def _sig(name: str, obj) -> str:
    try:
        return f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return name


def _entry(qualname: str, obj, level: str = "###") -> list:
    # the signature is fenced as text: python blocks on these pages are run by tests/test_docs.py
    return [f"{level} `{qualname}`", "", "```text", _sig(qualname, obj), "```", "", _doc(obj), ""]


def _methods(cls) -> list:
    """Public methods and properties a class defines itself or inherits from lambdaconv's base."""
    out = []
    for klass in cls.__mro__:
        if not klass.__module__.startswith("lambdaconv"):
            continue
        for name, v in vars(klass).items():
            if name.startswith("_") or name in [m for m, _ in out]:
                continue
            if isinstance(v, property) or inspect.isfunction(v):
                out.append((name, v))
    return sorted(out)


def render() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand. "
             "The user guide is [guide.md](guide.md).", ""]
    lines += ["## Functions", ""]
    for name in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "explain"):
        lines += _entry(f"lc.{name}", getattr(lc, name))

    lines += ["## Modules", ""]
    for name in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"):
        lines += _entry(f"lc.{name}", getattr(lc, name))
    lines += ["Methods and properties of every module:", ""]
    for name, v in _methods(lc.Conv2d):
        target = v.fget if isinstance(v, property) else v
        doc = (inspect.getdoc(target) or "").strip()
        kind = "property" if isinstance(v, property) else _sig(name, v).replace("(self, ", "(").replace("(self)", "()")
        lines.append(f"- `{kind if kind != 'property' else name}`{' (property)' if kind == 'property' else ''}"
                     f"{': ' + doc.splitlines()[0] if doc else ''}")
    lines.append("")

    lines += ["## Plans", ""]
    lines += _entry("lc.Plan", lc.Plan)
    lines += ["Fields:", ""]
    for f in lc.Plan.__dataclass_fields__.values():
        lines.append(f"- `{f.name}`")
    lines.append("")

    lines += ["## Constants", "", "`lc.PRESETS` (name: op, default reduce):", "",
              "| preset | op | reduce |", "|---|---|---|"]
    lines += [f"| `{k}` | `{op}` | {red} |" for k, (op, red) in lc.PRESETS.items()]
    lines += ["", f"`lc.REDUCES`: {', '.join(lc.REDUCES)}", "",
              f"`lc.PADDING_MODES`: {', '.join(lc.PADDING_MODES)}", ""]

    lines += ["## Settings", "", _doc(lc.settings), ""]
    for name in ("get", "override", "reload"):
        lines += _entry(f"lc.settings.{name}", getattr(lc.settings, name))

    lines += ["## Reductions", "", _doc(lc.reductions), "", "| name | identity | backward | kernel dialects | what |",
              "|---|---|---|---|---|"]
    for r in lc.reductions.all_records():
        lines.append(f"| `{r.name}` | {r.identity} | {r.backward} | {', '.join(r.code) or 'none'} | {r.doc} |")
    lines.append("")
    for name in ("Reduction", "register", "get", "names"):
        lines += _entry(f"lc.reductions.{name}", getattr(lc.reductions, name))

    lines += ["## Backends", "", _doc(backends), "", "Registered backends, in registration order:", "",
              "| name | priority under \"auto\" | what |", "|---|---|---|"]
    for name in registry.names()[1:]:
        b = registry.get(name)
        lines.append(f"| `{name}` | {'only when named' if b.priority is None else b.priority} | {b.doc} |")
    lines.append("")
    for name in ("Backend", "Call", "register", "select", "get", "names"):
        lines += _entry(f"lambdaconv.backends.registry.{name}", getattr(registry, name))

    lines += ["## Benchmarks", "", _doc(bench), ""]
    for name in ("main", "run"):
        lines += _entry(f"lambdaconv.bench.{name}", getattr(bench, name))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not API_MD.exists() or API_MD.read_text() != text:
            print("docs/api.md is out of date: run `python docs/gen_api.py`")
            return 1
        return 0
    API_MD.write_text(text)
    print(f"wrote {API_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
