"""The bounded-memory paths of `merge` and of resume (issue 14): the external merge spills
sorted runs to disk and gives the same bytes as the merge that fits in memory; a resumed run
keeps its done ids as 64-bit hashes and skips exactly those, even when an undone id's hash
collides with a done one's. (Plumbing: the dry-run backend.)"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from blspdata.generate import resume
from blspdata.generate.run import generate
from blspdata.records import sidecar
from conftest import REPO, blspdata, read_jsonl

MANIFEST = REPO / "manifests" / "sample" / "iemocap.jsonl"


def manifest_with_bad_rows(tmp_path: Path) -> Path:
    """The sample manifest plus a malformed line and a repeated id (location-keyed rejects)."""
    lines = MANIFEST.read_text().splitlines()
    lines.insert(3, "not json")
    lines.insert(6, lines[1])
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_external_merge_equals_the_in_memory_one(tmp_path: Path, monkeypatch):
    manifest = manifest_with_bad_rows(tmp_path)
    shards = []
    for i in range(3):
        out = tmp_path / f"shard{i}.jsonl"
        blspdata("generate", manifest, "-o", out, "--task", "emotion", "--backend", "dry-run", "--shard", f"{i}/3",
                 "--no-progress")
        shards.append(out)
    shards.reverse()  # merged in manifest order whatever order the shards are given in
    spilled: list[Path] = []
    real_write = resume._SpillSort._write

    def write(self, items):
        real_write(self, items)
        spilled.append(self.runs[-1])

    monkeypatch.setattr(resume._SpillSort, "_write", write)
    for extra in ({}, {"manifest": manifest}):
        in_memory, external = tmp_path / "in_memory.jsonl.gz", tmp_path / "external.jsonl.gz"
        spilled.clear()
        counts = resume.merge(shards, in_memory, **extra)
        assert not spilled
        counts_spilled = resume.merge(shards, external, run_bytes=300, **extra)  # a run of about one row
        assert len(spilled) > 20 and not any(p.exists() for p in spilled)  # spilled, then cleaned up
        assert counts == counts_spilled == {"rows": 90, "rejects": 2, "shards": 3, "missing": 0}
        assert external.read_bytes() == in_memory.read_bytes()
        assert sidecar(external, "rejects.jsonl").read_bytes() == sidecar(in_memory, "rejects.jsonl").read_bytes()
    ids = [row["id"] for row in read_jsonl(external)]
    assert ids == list(dict.fromkeys(row["id"] for row in read_jsonl(MANIFEST)))
    assert [r["reason"] for r in read_jsonl(sidecar(external, "rejects.jsonl"))] == ["malformed_row", "duplicate_id"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left

    # The checks hold on the spill path too: an overlap, and a gap.
    with pytest.raises(resume.MergeError, match="overlap: "):
        resume.merge(shards + [shards[0]], tmp_path / "m.jsonl", run_bytes=300)
    with pytest.raises(resume.MergeError, match=r"gap: \d+ id\(s\)"):
        resume.merge(shards[:2], tmp_path / "m.jsonl", manifest=manifest, run_bytes=300)
    assert not (tmp_path / "m.jsonl").exists()


def run(manifest: Path, out: Path, **options) -> int:
    summary = generate(manifest, out, task="emotion", backend="dry-run", progress=False, **options)
    return summary.to_dict()["written"]


def test_compact_resume_skips_exactly_the_done_ids(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    ids = [row["id"] for row in read_jsonl(MANIFEST)]
    assert run(MANIFEST, out, limit=40) == 40
    done = resume.recover(out)
    assert len(done) == 40 and set(done) == set(ids[:40])
    assert all(i in done for i in ids[:40]) and not any(i in done for i in ids[40:])
    assert run(MANIFEST, out) == len(ids) - 40
    assert [row["id"] for row in read_jsonl(out)] == ids  # each once, in manifest order


def test_a_hash_collision_never_skips_an_undone_id(tmp_path: Path, monkeypatch):
    out = tmp_path / "out.jsonl"
    ids = [row["id"] for row in read_jsonl(MANIFEST)]
    assert run(MANIFEST, out, limit=10) == 10
    real = resume.id_hash
    # Every id not done yet now hashes as the first done one does.
    monkeypatch.setattr(resume, "id_hash", lambda record_id: real(ids[0]) if record_id in ids[10:] else real(record_id))
    done = resume.recover(out)
    assert ids[0] in done and ids[10] not in done and ids[-1] not in done
    assert run(MANIFEST, out) == len(ids) - 10
    assert [row["id"] for row in read_jsonl(out)] == ids

    # All rows on one hash: each still read back as itself.
    monkeypatch.setattr(resume, "id_hash", lambda record_id: 7)
    done = resume.recover(out)
    assert len(done) == len(ids) and sorted(done) == sorted(ids) and "iemocap/train/none" not in done


def test_manifest_positions_resolve_colliding_ids(tmp_path: Path, monkeypatch):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in ["a", "b", "c", "a", "d"]))
    monkeypatch.setattr(resume, "id_hash", lambda record_id: 1 if record_id in ("b", "c") else ord(record_id))
    positions = resume.manifest_positions(manifest)
    assert [positions.get(i) for i in "abcd"] == [1, 2, 3, 5] and "e" not in positions


def test_repeated_ids_are_found_after_the_compact_id_set_has_merged(tmp_path: Path, monkeypatch):
    """The ids met so far live in a sorted array plus a small set of the newest (records.HashSet);
    a repeat of an id that has moved into the array is still a `duplicate_id` (generate's
    manifest; curate and publish use the same set through records.SeenIds)."""
    from blspdata import records

    monkeypatch.setattr(records.HashSet, "BUFFER", 2)  # a merge every two ids
    lines = MANIFEST.read_text().splitlines()
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines + [lines[0], lines[5]]) + "\n")  # the first and sixth ids again, last
    out = tmp_path / "out.jsonl"
    assert run(manifest, out) == len(lines)
    rejects = read_jsonl(sidecar(out, "rejects.jsonl"))
    assert [r["reason"] for r in rejects] == ["duplicate_id", "duplicate_id"]
    assert [r["source"] for r in rejects] == [f"{manifest}:{len(lines) + 1}", f"{manifest}:{len(lines) + 2}"]

    seen = records.HashSet()
    keys = [records.key_hash("emotion", str(i)) for i in range(50)]
    assert all(seen.add(k) for k in keys) and len(seen) == 50
    assert not any(seen.add(k) for k in keys) and len(seen) == 50
    assert records.key_hash("emotion", "50") not in seen
