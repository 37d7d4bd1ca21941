"""Spec-Bench's question set (Xia et al., ACL 2024 Findings; github.com/hemingkx/Spec-Bench),
vendored in bench/data/spec-bench/ with its licence and source (SOURCE.md there).

The leaderboard reports six categories: multi-turn conversation (MT-bench's 80 two-turn
questions in eight sub-categories), translation, summarization, question answering,
mathematical reasoning and retrieval-augmented generation (80 questions each). Here each is
the bench domain `spec-bench/<category>`; `--domains spec-bench` means all six.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "spec-bench" / "question.jsonl"
SHA256 = "4b6d33e79484f9841c487ee87d1cf6aa8c6066f61d5d482ff09e5a007fafdf04"
PREFIX = "spec-bench/"
MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
            "humanities")
# the leaderboard's columns, in its order
CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


def load_questions(path: Path = DATA, sha256: str = SHA256) -> list[dict]:
    """Every question, after checking the file is the vendored copy byte for byte."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path}: sha256 {digest} is not the vendored copy's {sha256}; "
                         "restore the file from bench/data/spec-bench/SOURCE.md's source")
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def category_of(question: dict) -> str:
    return "mt_bench" if question["category"] in MT_BENCH else question["category"]


def conversations(category: str, questions: list[dict] | None = None) -> list[list[str]]:
    """The user turns of each question of a leaderboard category, in the file's order."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown Spec-Bench category {category!r}; one of {CATEGORIES}")
    questions = load_questions() if questions is None else questions
    return [q["turns"] for q in questions if category_of(q) == category]


def spread(items: list, n: int) -> list:
    """n items evenly spaced through the list (the first n would be all one MT-bench
    sub-category)."""
    n = min(n, len(items))
    return [items[i * len(items) // n] for i in range(n)]


def expand(domains: list[str]) -> list[str]:
    """`spec-bench` stands for its six categories."""
    out = []
    for d in domains:
        out += [PREFIX + c for c in CATEGORIES] if d == "spec-bench" else [d]
    return out
