"""The llama.cpp peer: its own binaries on the same GGUF pair, prompts and threads.

specdec's registry models are GGUF files (Q4_K_M) that specdec dequantizes to bf16; llama.cpp
runs the same files as they are. Two systems per domain, greedy only:

- llamacpp_target_only: `llama-completion` with the target alone;
- llamacpp_speculative: `llama-speculative-simple` with the draft (--spec-type draft-simple,
  --spec-draft-n-max, --spec-draft-p-min).

Both generate exactly max_new_tokens (--ignore-eos, as the Hugging Face peer's
min_new_tokens); tokens/s = tokens / (prompt processing + generation), model loading
excluded, as specdec's figures count from the request. The binaries come from
`bench/get-llama-cpp.sh` (builds the llama.cpp vendored in the llama-cpp-python sdist, ~15
minutes on 2 cores) or any llama.cpp build: pass --llama-cpp DIR or set LLAMA_CPP_DIR.
Without them the peer is skipped with a message; CI never needs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tqdm import tqdm

from bench.stats import speedup
from specdec.fetch import REGISTRY

COMPLETION, SPECULATIVE = "llama-completion", "llama-speculative-simple"
# llama.cpp's best speculative setting on this project's CPU (../shared/MACHINE.md: draft-max
# 1-16 and p-min 0-0.9 swept; 8 / 0.75 was fastest)
DRAFT_MAX, DRAFT_P_MIN = 8, 0.75

_PERF = re.compile(r"(prompt eval|eval) time =\s*([\d.]+) ms /\s*(\d+) (?:tokens|runs)")
_SPEC = re.compile(r"(encoded|decoded)\s+(\d+) tokens in\s+([\d.]+) seconds")
_ACCEPT = re.compile(r"accept\s+=\s+([\d.]+)%")


def find_binaries(directory: str = "") -> Path | None:
    """The directory holding llama-completion and llama-speculative-simple: `directory`, else
    $LLAMA_CPP_DIR, else the PATH's; None when not found."""
    for d in (directory, os.environ.get("LLAMA_CPP_DIR", "")):
        if d:
            path = Path(d).expanduser()
            if (path / COMPLETION).is_file() and (path / SPECULATIVE).is_file():
                return path
            if directory:
                return None
    found = shutil.which(COMPLETION)
    return Path(found).parent if found and shutil.which(SPECULATIVE) else None


def gguf_file(model: str, cache_dir: str) -> Path | None:
    """The GGUF file of a registry model (fetched by specdec) or a .gguf path; None otherwise."""
    if model in REGISTRY:
        path = Path(cache_dir) / "gguf" / REGISTRY[model].mirror.gguf_name
        return path if path.is_file() else None
    return Path(model) if model.endswith(".gguf") and Path(model).is_file() else None


def run_one(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited with {proc.returncode}: "
                           f"{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def target_only(bin_dir: Path, target: Path, prompt_file: str, max_new: int,
                threads: int) -> dict:
    text = run_one([str(bin_dir / COMPLETION), "-m", str(target), "-f", prompt_file,
                    "-n", str(max_new), "-t", str(threads), "--temp", "0", "--ignore-eos",
                    "-no-cnv", "--no-display-prompt", "-c", "4096"])
    times = {name: (float(ms) / 1e3, int(n)) for name, ms, n in _PERF.findall(text)}
    if "eval" not in times:
        raise RuntimeError(f"no timings in {COMPLETION}'s output: {text[-2000:]}")
    # every eval run decodes one generated token; the first comes from the prompt pass
    tokens = times["eval"][1] + 1
    return {"tokens": tokens, "total_s": times["prompt eval"][0] + times["eval"][0]}


def speculative(bin_dir: Path, target: Path, draft: Path, prompt_file: str, max_new: int,
                threads: int) -> dict:
    text = run_one([str(bin_dir / SPECULATIVE), "-m", str(target), "-md", str(draft),
                    "-f", prompt_file, "-n", str(max_new), "-t", str(threads),
                    "-td", str(threads), "--temp", "0", "--ignore-eos", "-c", "4096",
                    "--spec-type", "draft-simple", "--spec-draft-n-max", str(DRAFT_MAX),
                    "--spec-draft-n-min", "0", "--spec-draft-p-min", str(DRAFT_P_MIN)])
    phases = {name: (int(n), float(s)) for name, n, s in _SPEC.findall(text)}
    if "decoded" not in phases:
        raise RuntimeError(f"no timings in {SPECULATIVE}'s output: {text[-2000:]}")
    accept = _ACCEPT.search(text)
    return {"tokens": phases["decoded"][0],
            "total_s": phases.get("encoded", (0, 0.0))[1] + phases["decoded"][1],
            "acceptance_rate": float(accept.group(1)) / 100 if accept else None}


def run_llamacpp(bin_dir: Path, draft: Path, target: Path, tokenizer, plan, records: list[dict],
                 base: dict, out, threads: int) -> list[dict]:
    """Greedy runs of both systems per domain; one record each, with specdec's fastest
    greedy configuration of the run compared against it."""
    from bench.peer import best_run
    from bench.run import swept_prompts

    new = []
    if 0.0 not in plan.temps:
        print("llama.cpp peer: runs greedy only, and --temps has no 0: skipped")
        return new
    for domain in tqdm(plan.domains, desc="llama.cpp peer", unit="domain"):
        runs = {"llamacpp_target_only": [], "llamacpp_speculative": []}
        for prompt, _ in swept_prompts(records, domain, 0.0):
            with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
                f.write(prompt)
                f.flush()
                runs["llamacpp_target_only"].append(
                    target_only(bin_dir, target, f.name, plan.max_new_tokens, threads))
                runs["llamacpp_speculative"].append(
                    speculative(bin_dir, target, draft, f.name, plan.max_new_tokens, threads))
        ours = best_run(records, domain, 0.0)
        baseline = next((r for r in records if r["system"] == "specdec" and r["k"] == 0
                         and r["domain"] == domain and r["temperature"] == 0.0), None)
        for system, rs in runs.items():
            tps = sum(r["tokens"] for r in rs) / sum(r["total_s"] for r in rs)
            rec = {**base, "system": system, "domain": domain, "temperature": 0.0,
                   "k": DRAFT_MAX if system.endswith("speculative") else 0,
                   "prompts": len(rs), "tokens": sum(r["tokens"] for r in rs),
                   "tokens_per_s": tps, "runs": rs, "weights": "GGUF Q4_K_M",
                   "draft_p_min": DRAFT_P_MIN}
            if ours:
                rec["specdec_speedup_vs_this"] = speedup(ours["tokens_per_s"], tps)
            if baseline:
                rec["specdec_target_only_vs_this"] = speedup(baseline["tokens_per_s"], tps)
            new.append(rec)
            out.write(json.dumps(rec) + "\n")
    return new
