"""The README's and docs' relative links lead somewhere: the file exists and, where a link
names a section (#anchor), the file has a heading with that anchor (GitHub's slugs)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings in code
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # not http: etc.


def test_slugs_follow_github():
    assert slug("Benchmarks (`make bench`)") == "benchmarks-make-bench"
    assert slug("llama.cpp on the same GGUF pair (`--llama-cpp`)") == (
        "llamacpp-on-the-same-gguf-pair---llama-cpp")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no such section")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


# --- the flag and environment tables of docs/deployment.md against the programs -------------

DEPLOYMENT = ROOT / "docs" / "deployment.md"


def table_after(text: str, intro: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table that follows the line `intro` (or whose header
    line `intro` is)."""
    lines = text.splitlines()
    start = lines.index(intro)
    while not lines[start].startswith("|"):
        start += 1
    rows = []
    for line in lines[start + 2:]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def documented(rows: list[list[str]], pattern: str) -> set[str]:
    return {name for row in rows for name in re.findall(rf"`({pattern})`", row[0])}


def flags(parser) -> dict[str, object]:
    """Every long option of a parser (but --help) -> its argparse action."""
    return {o: a for a in parser._actions for o in a.option_strings
            if o.startswith("--") and o != "--help"}


def suggested_row(flag: str, action) -> str:
    """A row to start from: the flag, its default and its help without the env suffix."""
    meaning = re.sub(r"\s*\[env [A-Z_]+; default: .*\]$", "", action.help or "")
    return f"| `{flag}` | {action.default} | {meaning} |"


def table_drift(intro: str, rows, have: dict[str, str], kind: str) -> str:
    """'' when the table names exactly `have` (name -> row to suggest), else what to fix."""
    docs = documented(rows, "--[a-z0-9-]+" if kind == "flag" else "[A-Z][A-Z0-9_]*")
    missing, extra = sorted(set(have) - docs), sorted(docs - set(have))
    if not (missing or extra):
        return ""
    out = [f"docs/deployment.md, the table after {intro!r}:"]
    if missing:
        out.append(f"  add a row for each {kind} it lacks (edit the meaning as needed):")
        out += [f"    {have[name]}" for name in missing]
    if extra:
        out.append(f"  remove the rows of {', '.join(extra)}: no such {kind}")
    return "\n".join(out)


def program_tables():
    from coordinator.config import parser as coordinator_parser
    from specdec.config import model_service_parser
    from specdec.serve import parser as serve_parser

    services = {**flags(model_service_parser("draft", "draft", 50051)),
                **flags(model_service_parser("target", "target", 50052))}
    return [("Draft and target service flags:", services),
            ("Coordinator flags:", flags(coordinator_parser())),
            ("`python -m specdec serve` flags:", flags(serve_parser()))]


@pytest.mark.parametrize("intro,actions", program_tables(), ids=["services", "coordinator",
                                                                 "serve"])
def test_flag_tables_match_the_parsers(intro, actions):
    rows = table_after(DEPLOYMENT.read_text(), intro)
    drift = table_drift(intro, rows, {f: suggested_row(f, a) for f, a in actions.items()},
                        "flag")
    assert not drift, drift


def compose_variables() -> dict[str, str]:
    """Every variable compose.yaml and compose.cpu.yaml interpolate -> its default there."""
    found = {}
    for path in (ROOT / "compose.yaml", ROOT / "compose.cpu.yaml"):
        for name, default in re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?::?-([^}]*))?\}",
                                        path.read_text()):
            found.setdefault(name, default)
    return found


def test_environment_table_matches_the_compose_files():
    intro = "| variable | default | meaning |"
    rows = table_after(DEPLOYMENT.read_text(), intro)
    have = {name: f"| `{name}` | {default or '(none)'} | … |"
            for name, default in compose_variables().items()}
    drift = table_drift(intro, rows, have, "variable")
    assert not drift, drift
