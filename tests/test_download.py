"""emprl.download: atomic fetch with sha256 check, safe tarball extraction, offline errors. No real network."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
from pathlib import Path

import pytest

from emprl import data, download
from emprl.download import DownloadError, extract_empathetic_dialogues, fetch

RAW = (
    "conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags\n"
    "hit:0_conv:1,1,proud,I won_comma_ yes.,1,I won!,,\n"
    "hit:0_conv:1,2,proud,I won_comma_ yes.,2,Well done_comma_ you!,,,Well done_comma_ you!|Nice\n"
)
EPITOME = "sp_id,rp_id,seeker_post,response_post,level,rationales\ns1,r1,help,\"I'm here, what happened?\",{level},\n"


def make_tarball(path: Path, members: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A local 'internet': the tarball and EPITOME files behind file:// URLs, with their hashes."""
    src = tmp_path / "src"
    src.mkdir()
    make_tarball(src / "ed.tar.gz", {f"empatheticdialogues/{s}.csv": RAW for s in data.SPLITS})
    hashes = {}
    for level, name in enumerate(data.EPITOME_FILES.values()):
        (src / name).write_text(EPITOME.format(level=level), encoding="utf-8")
        hashes[name] = hashlib.sha256((src / name).read_bytes()).hexdigest()
    monkeypatch.setattr(download, "ED_URL", (src / "ed.tar.gz").as_uri())
    monkeypatch.setattr(download, "EPITOME_URL", src.as_uri() + "/{name}")
    monkeypatch.setattr(download, "EPITOME_SHA256", hashes)
    return src


def no_leftovers(folder: Path) -> bool:
    return not list(folder.rglob("*.part"))


def test_fetch_file_url_with_checksum(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 200_000)
    dest = fetch(src.as_uri(), tmp_path / "out" / "a.bin", sha256=hashlib.sha256(b"x" * 200_000).hexdigest())
    assert dest.read_bytes() == src.read_bytes()
    assert no_leftovers(tmp_path)


def test_fetch_checksum_mismatch_writes_nothing(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"tampered")
    with pytest.raises(DownloadError, match="sha256 .* does not match the expected 00"):
        fetch(src.as_uri(), tmp_path / "out" / "a.bin", sha256="00" * 32)
    assert not (tmp_path / "out" / "a.bin").exists() and no_leftovers(tmp_path)


def test_interrupted_download_leaves_old_file_intact(tmp_path):
    class Broken:
        headers = {"Content-Length": "100"}

        def __init__(self):
            self.calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionResetError("connection reset")
            return b"partial"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    dest = tmp_path / "a.csv"
    dest.write_text("old complete file")
    with pytest.raises(DownloadError, match="connection reset"):
        fetch("https://example.invalid/a.csv", dest, opener=lambda url, timeout: Broken())
    assert dest.read_text() == "old complete file" and no_leftovers(tmp_path)


def test_download_then_load(tmp_path, source):
    target = tmp_path / "data"
    written = download.download(target)
    assert {p.name for p in written} >= {"train.csv", "valid.csv", "test.csv", *data.EPITOME_FILES.values()}
    examples = data.load_empathetic_dialogues("valid", target)
    assert [(e.context, e.response) for e in examples] == [(("I won!",), "Well done, you!")]
    records = data.load_epitome(target)
    assert records[0].levels == {"emotional_reactions": 0, "interpretations": 1, "explorations": 2}
    assert records[0].response_post == "I'm here, what happened?"
    assert no_leftovers(target)

    calls = []

    def opener(url, timeout):
        calls.append(url)
        raise AssertionError("nothing should be fetched again")

    assert download.download(target, opener=opener) == []  # everything present and verified
    assert calls == []


def test_download_replaces_a_corrupted_epitome_file(tmp_path, source):
    target = tmp_path / "data"
    download.download(target, datasets=("epitome",))
    bad = target / "epitome" / "explorations-reddit.csv"
    bad.write_text("corrupted")
    written = download.download(target, datasets=("epitome",))
    assert written == [bad] and bad.read_bytes() == (source / bad.name).read_bytes()


def test_offline_error_says_what_to_put_where(tmp_path, source):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    target = tmp_path / "data"
    with pytest.raises(DownloadError) as err:
        download.download(target, opener=offline)
    message = str(err.value)
    assert "name resolution" in message and "by hand" in message
    for split in data.SPLITS:
        assert str(target / "empatheticdialogues" / f"{split}.csv") in message
    for name, digest in download.EPITOME_SHA256.items():
        assert f"{target / 'epitome' / name} (sha256 {digest})" in message
    assert not (target / "empatheticdialogues.tar.gz").exists() and no_leftovers(tmp_path)


def test_unsafe_tarball_is_refused(tmp_path):
    archive = make_tarball(tmp_path / "evil.tar.gz", {"empatheticdialogues/../../evil.txt": "x"})
    with pytest.raises(DownloadError, match="unexpected member"):
        extract_empathetic_dialogues(archive, tmp_path / "data")
    assert not (tmp_path / "evil.txt").exists()
    incomplete = make_tarball(tmp_path / "part.tar.gz", {"empatheticdialogues/train.csv": RAW})
    with pytest.raises(DownloadError, match="did not contain .*valid.csv"):
        extract_empathetic_dialogues(incomplete, tmp_path / "data")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DownloadError, match="cannot extract"):
        extract_empathetic_dialogues(tmp_path / "junk.tar.gz", tmp_path / "data")


def test_cli(tmp_path, source, monkeypatch, capsys):
    assert download.main(["--data-dir", str(tmp_path / "d"), "--only", "epitome"]) == 0
    assert (tmp_path / "d" / "epitome" / "interpretations-reddit.csv").is_file()
    assert not (tmp_path / "d" / "empatheticdialogues").exists()
    capsys.readouterr()
    monkeypatch.setattr(download, "ED_URL", (tmp_path / "missing.tar.gz").as_uri())
    assert download.main(["--data-dir", str(tmp_path / "e"), "--only", "empatheticdialogues"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and "Traceback" not in err
    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)
    with pytest.raises(SystemExit):
        download.main([])
