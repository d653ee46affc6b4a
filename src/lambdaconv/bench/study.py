"""What every study of `python -m lambdaconv.bench STUDY` shares: its common options, the device
set-up, and the end of a run (the rows printed as a table and appended to --out's results table)."""
from __future__ import annotations

import argparse
import dataclasses

import torch

from . import report

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser for a study with the common options (--device, --rounds, --threads, --out)."""
    first, _, rest = doc.strip().partition("\n\n")
    p = argparse.ArgumentParser(prog=f"python -m lambdaconv.bench {name}", description=first, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default per study)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in cuDNN/cuBLAS (default off: fp32 is fp32)")
    p.add_argument("--note", help="a note for every row (the conditions, e.g. 'shared with other jobs')")
    p.add_argument("--out", help="append the rows to DIR/results.md (e.g. benchmarks/results)")
    return p


def setup(args, cuda_only: bool = False) -> torch.device:
    """The device, checked, with TF32 and the thread count set as asked."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if cuda_only and device.type != "cuda":
        raise SystemExit("this study needs --device cuda")
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def ratios(rows: list, base: str, key=lambda r: (r.get("op"), r.get("shape"), r.get("mode"), r.get("dtype"))):
    """Set each row's vs / ratio against the row of method `base` with the same key (same run)."""
    ref = {key(r): r["ms"] for r in rows if r.get("method") == base and r.get("ms")}
    for r in rows:
        t = ref.get(key(r))
        if t and r.get("ms") and "ratio" not in r:
            r["vs"], r["ratio"] = base, r["ms"] / t


def finish(study: str, rows: list, args, device, device_label: str = "") -> list:
    """Print the rows as a table; append them to args.out's results table. The rows, with `study`."""
    meta = report.run_meta(device)
    if device_label:
        meta["device"] = device_label
    fell = _gluon_fallbacks()
    for r in rows:
        r["study"] = study
        if fell:  # the rows may have timed the portable kernels: say so in every row of the run
            r["note"] = f"{r['note']}; {fell}" if r.get("note") else fell
        if args.note:
            r["note"] = f"{r['note']}; {args.note}" if r.get("note") else args.note
    print(report.table(rows, meta), flush=True)
    if args.out:
        print("appended to " + report.append(args.out, rows, meta))
    return rows


def _gluon_fallbacks() -> str:
    """"Gluon fell back to portable in this run (reason)" where a Gluon kernel failed, else ""."""
    import sys
    gluon = sys.modules.get("lambdaconv.backends.triton.gluon")  # not imported: no Gluon kernel ran
    if gluon is None or not gluon.FALLBACKS:
        return ""
    return f"Gluon fell back to portable in this run ({'; '.join(dict.fromkeys(gluon.FALLBACKS))})"


def timed(rows_by_name: dict, times: dict, errors: dict) -> None:
    """Put interleaved()'s (median, min) seconds and errors into the rows of the same names."""
    for name, (med, _best) in times.items():
        rows_by_name[name]["ms"] = med * 1e3
    for name, err in errors.items():
        rows_by_name[name]["note"] = err


def cache_environ(root: str) -> dict:
    """The environment for a child process whose compile caches (lambdaconv's, Triton's,
    Inductor's) live under `root` (a fresh directory: empty caches; the same one again: warm)."""
    import os
    from .. import settings
    return settings.child_environ(LAMBDACONV_CACHE=os.path.join(root, "lambdaconv"),
                                  TRITON_CACHE_DIR=os.path.join(root, "triton"),
                                  TORCHINDUCTOR_CACHE_DIR=os.path.join(root, "inductor"))


def parse_settings(text: str) -> dict:
    """"gluon_bwd=1,gluon_sgn=x" -> {"gluon_bwd": "1", "gluon_sgn": "x"}, each value typed as the
    lambdaconv.settings field it sets (ValueError on an unknown field or a bad value); "" -> {}."""
    from .. import settings
    fields = [f.name for f in dataclasses.fields(settings.Settings)]
    out = {}
    for item in filter(str.strip, text.split(",")):
        name, eq, raw = (s.strip() for s in item.partition("="))
        if not eq or name not in fields:
            raise ValueError(f"bad setting {item!r}: expected NAME=VALUE, NAME one of {', '.join(fields)}")
        out[name] = settings._parse(name, raw)
    return out
