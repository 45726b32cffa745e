import subprocess
import sys

import pytest

from mmdlib.cache import cache_dir, cached


def test_keyed_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "x.txt").write_text(str(len(calls)))

    a, a2, b = cached("k", {"v": 1}, build), cached("k", {"v": 1}, build), cached("k", {"v": 2}, build)
    assert a == a2 != b and len(calls) == 2 and cache_dir() == tmp_path
    assert (a / "x.txt").read_text() == "1" and (b / "x.txt").read_text() == "2"


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))

    def build(folder):
        (folder / "half.bin").write_bytes(b"12")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached("k", {"v": 1}, build)
    assert [p.name for p in (tmp_path / "k").iterdir() if not p.name.endswith(".lock")] == []
    ok = cached("k", {"v": 1}, lambda f: (f / "y").write_text("ok"))
    assert (ok / "y").read_text() == "ok"


def test_second_process_finds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))
    first = cached("k", {"v": 3}, lambda f: (f / "y").write_text("built"))
    code = ("from mmdlib.cache import cached\n"
            "def boom(f): raise SystemExit('built twice')\n"
            "print(cached('k', {'v': 3}, boom))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(first)
