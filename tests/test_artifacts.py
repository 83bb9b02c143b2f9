"""Step output folders: temporary name, hash, rename into place; digests of named outputs."""
from __future__ import annotations

import hashlib

from atlas import artifacts


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_temp_dir_is_fresh_and_outside_the_final_folder(tmp_path):
    state = tmp_path / ".atlas"
    tmp = artifacts.temp_dir(state, "A", 7)
    assert tmp == state / "out" / ".tmp" / "A-7" and tmp.is_dir()
    (tmp / "stale.txt").write_text("from a killed attempt")
    again = artifacts.temp_dir(state, "A", 7)
    assert again == tmp and list(again.iterdir()) == []
    assert not artifacts.final_dir(state, "A").exists()


def test_publish_keeps_previous_outputs_until_the_new_folder_is_complete(tmp_path):
    state = tmp_path / ".atlas"
    first = artifacts.temp_dir(state, "A", 1)
    (first / "model.onnx").write_bytes(b"old")
    final = artifacts.publish(first, state, "A")
    assert final == artifacts.final_dir(state, "A")
    assert (final / "model.onnx").read_bytes() == b"old"
    assert not first.exists()

    second = artifacts.temp_dir(state, "A", 2)
    (second / "model.onnx").write_bytes(b"new, half written")
    # while the new attempt is still writing, readers see the last good outputs
    assert (final / "model.onnx").read_bytes() == b"old"
    (second / "model.onnx").write_bytes(b"new")
    (second / "extra.json").write_text("{}")
    assert artifacts.publish(second, state, "A") == final
    assert sorted(p.name for p in final.iterdir()) == ["extra.json", "model.onnx"]
    assert (final / "model.onnx").read_bytes() == b"new"
    assert not second.exists()
    # nothing is left behind next to the outputs: no .old-* folder
    assert sorted(p.name for p in (state / "out").iterdir()) == [".tmp", "A"]


def test_a_failed_attempt_leaves_the_previous_outputs_and_keeps_its_own_aside(tmp_path):
    state = tmp_path / ".atlas"
    good = artifacts.temp_dir(state, "A", 1)
    (good / "model.onnx").write_bytes(b"good")
    artifacts.publish(good, state, "A")

    bad = artifacts.temp_dir(state, "A", 2)
    (bad / "partial.bin").write_bytes(b"half")
    kept = artifacts.keep_failed(bad, state, "A")
    assert kept == state / "out" / ".failed" / "A"
    assert (kept / "partial.bin").read_bytes() == b"half"
    assert not bad.exists()
    final = artifacts.final_dir(state, "A")
    assert [p.name for p in final.iterdir()] == ["model.onnx"]
    assert (final / "model.onnx").read_bytes() == b"good"

    # a later failure replaces the kept folder rather than mixing with it
    worse = artifacts.temp_dir(state, "A", 3)
    (worse / "other.bin").write_bytes(b"x")
    artifacts.keep_failed(worse, state, "A")
    assert [p.name for p in kept.iterdir()] == ["other.bin"]


def test_missing_outputs_for_files_and_folders(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"m")
    (tmp_path / "engines").mkdir()
    (tmp_path / "report.json").mkdir()  # a folder where a file is declared
    (tmp_path / "calib").write_text("x")  # a file where a folder is declared
    declared = ("model.onnx", "engines/", "report.json", "calib/", "absent.txt", "absent_dir/")
    assert artifacts.missing_outputs(tmp_path, declared) == ["report.json", "calib/", "absent.txt", "absent_dir/"]
    assert artifacts.missing_outputs(tmp_path, ("model.onnx", "engines/")) == []
    assert artifacts.missing_outputs(tmp_path, ()) == []


def test_hash_folder_skips_hidden_temp_files(tmp_path):
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "fp16.engine").write_bytes(b"E16")
    (tmp_path / "model.onnx").write_bytes(b"MODEL")
    (tmp_path / ".model.onnx.abc123").write_bytes(b"half-written temp")  # Context.write_text's temp name
    (tmp_path / "engines" / ".fp32.engine.tmp").write_bytes(b"temp")
    assert artifacts.hash_folder(tmp_path) == [
        ("engines/fp16.engine", sha(b"E16"), 3),
        ("model.onnx", sha(b"MODEL"), 5),
    ]


def test_hash_folder_of_an_empty_folder(tmp_path):
    assert artifacts.hash_folder(tmp_path) == []


ARTS = [
    {"name": "model.onnx", "sha256": "m" * 64},
    {"name": "engines/fp32.engine", "sha256": "b" * 64},
    {"name": "engines/fp16.engine", "sha256": "a" * 64},
    {"name": "engines_old/x.engine", "sha256": "c" * 64},
]


def test_input_digest_of_a_file_is_its_sha256():
    assert artifacts.input_digest(ARTS, "model.onnx") == "m" * 64


def test_input_digest_of_a_folder_covers_every_file_under_the_prefix():
    expected = sha(f"engines/fp16.engine {'a' * 64}\nengines/fp32.engine {'b' * 64}".encode())
    assert artifacts.input_digest(ARTS, "engines/") == expected
    assert artifacts.input_digest(ARTS, "engines") == expected  # the slash is optional
    # order of the stored rows does not matter; a sibling folder with the same prefix text is not included
    assert artifacts.input_digest(list(reversed(ARTS)), "engines/") == expected
    changed = [a | {"sha256": "z" * 64} if a["name"] == "engines/fp32.engine" else a for a in ARTS]
    assert artifacts.input_digest(changed, "engines/") != expected
    sibling_changed = [a | {"sha256": "z" * 64} if a["name"].startswith("engines_old") else a for a in ARTS]
    assert artifacts.input_digest(sibling_changed, "engines/") == expected


def test_input_digest_of_a_folder_with_one_file_is_not_the_file_digest():
    arts = [{"name": "engines/fp16.engine", "sha256": "a" * 64}]
    digest = artifacts.input_digest(arts, "engines/")
    assert digest is not None and digest != "a" * 64  # renaming the file inside changes it
    renamed = [{"name": "engines/int8.engine", "sha256": "a" * 64}]
    assert artifacts.input_digest(renamed, "engines/") != digest


def test_input_digest_missing_is_none():
    assert artifacts.input_digest(ARTS, "profile.yaml") is None
    assert artifacts.input_digest([], "engines/") is None
