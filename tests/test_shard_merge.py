"""`--shard I/N` splits a manifest by a stable hash of the id; `blspdata merge` joins the
shards, refusing overlaps and gaps. (Plumbing: uses the dry-run backend.)"""

from __future__ import annotations

from pathlib import Path

from blspdata.generate.resume import shard_of
from conftest import REPO, blspdata, read_jsonl

MANIFEST = REPO / "manifests" / "sample" / "iemocap.jsonl"


def run_shard(tmp_path: Path, index: int, count: int) -> Path:
    out = tmp_path / f"shard{index}.jsonl"
    blspdata("generate", MANIFEST, "-o", out, "--task", "emotion", "--backend", "dry-run", "--shard",
             f"{index}/{count}", "--no-progress")
    return out


def test_shards_partition_the_manifest_and_merge_back_in_order(tmp_path: Path):
    shards = [run_shard(tmp_path, i, 3) for i in range(3)]
    ids = [row["id"] for row in read_jsonl(MANIFEST)]
    per_shard = [[row["id"] for row in read_jsonl(s)] for s in shards]
    assert all(per_shard) and sorted(sum(per_shard, [])) == sorted(ids)
    assert all(shard_of(i, 3) == n for n, shard in enumerate(per_shard) for i in shard)

    out = tmp_path / "merged.jsonl.gz"
    result = blspdata("merge", *shards, "-o", out, "--manifest", MANIFEST)
    assert [row["id"] for row in read_jsonl(out)] == ids
    assert f"{len(ids)} rows" in result.stdout


def test_merge_refuses_gaps_and_overlaps(tmp_path: Path):
    first, second = run_shard(tmp_path, 0, 2), run_shard(tmp_path, 1, 2)
    result = blspdata("merge", first, "-o", tmp_path / "m.jsonl", "--manifest", MANIFEST, check=False)
    assert result.returncode == 1 and "gap:" in result.stderr and "--allow-gaps" in result.stderr
    assert not (tmp_path / "m.jsonl").exists()
    blspdata("merge", first, "-o", tmp_path / "m.jsonl", "--manifest", MANIFEST, "--allow-gaps")

    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(second.read_bytes())
    result = blspdata("merge", first, second, copy, "-o", tmp_path / "m2.jsonl", check=False)
    assert result.returncode == 1 and "overlap:" in result.stderr


def test_bad_shard_spec(tmp_path: Path):
    result = blspdata("generate", MANIFEST, "-o", tmp_path / "x.jsonl", "--backend", "dry-run", "--shard", "3/3",
                      check=False)
    assert result.returncode == 1 and "0 <= I < N" in result.stderr
