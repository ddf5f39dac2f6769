"""Batches grouped by length (`--group-by-length`): the same rows each epoch as the default
order, every rank its share, less padding; off by default (the reference's order)."""

from __future__ import annotations

import numpy as np

from blspdata.train.config import TrainConfig
from blspdata.train.data import Batches, speech_positions


def rows_of(batches: Batches, epoch: int) -> list[list[int]]:
    return [[index for _, index in batch] for batch in batches.epoch(epoch)]


def padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_grouping_is_off_by_default_and_keeps_the_reference_order():
    assert TrainConfig().group_by_length is False and TrainConfig.for_stage("stage2").group_by_length is False
    sources = [("data", list(range(100)))]
    assert rows_of(Batches(sources, 4, 42, 0, 1), 0) == rows_of(Batches(sources, 4, 42, 0, 1, lengths=None), 0)


def test_grouped_batches_hold_the_same_rows_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(20, 400, size=1000)]
    sources = [("data", list(range(1000)))]
    plain, grouped = Batches(sources, 8, 42, 0, 1), Batches(sources, 8, 42, 0, 1, lengths=lengths, window=16)
    for epoch in (0, 1):
        a, b = rows_of(plain, epoch), rows_of(grouped, epoch)
        assert len(a) == len(b) == plain.per_epoch()
        assert sorted(i for batch in b for i in batch) == sorted(range(1000))  # 1000 = 125 x 8: every row, once
        assert padding(b, lengths) < padding(a, lengths) / 4
    assert rows_of(grouped, 0) != rows_of(grouped, 1)  # still shuffled per epoch
    assert rows_of(grouped, 0) == rows_of(Batches(sources, 8, 42, 0, 1, lengths=lengths, window=16), 0)  # seeded


def test_every_rank_gets_its_share_of_each_grouped_batch():
    lengths = list(range(64))
    sources = [("data", list(range(64)))]
    ranks = [rows_of(Batches(sources, 4, 1, rank, 2, lengths=lengths), 0) for rank in (0, 1)]
    assert sorted(i for r in ranks for batch in r for i in batch) == list(range(64))
    for one, other in zip(*ranks):  # the two ranks' batches of one step are of similar length
        assert abs(max(one) - max(other)) <= 1


def test_speech_positions_follow_the_encoder_and_the_subsampler():
    assert speech_positions(30.0) == 188  # 1500 frames -> 750 -> 375 -> 188
    assert speech_positions(60.0) == 188  # the 30-s window at most
    assert speech_positions(1.0) == 7  # 50 frames -> 25 -> 13 -> 7


def test_data_workers_hand_back_the_batches_in_order_decoded_and_without_their_bytes():
    """Worker w of W decodes the batches at positions p % W == w; the DataLoader takes them in
    turn, so 3 workers give the batches of the in-process path, in its order, from a resumed
    micro-step on; audio that does not decode is counted per batch, its row left out."""
    import io
    import itertools

    import soundfile as sf

    from blspdata.train.data import decoded_batches

    def flac(samples: int) -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, np.full(samples, 0.01, dtype="float32"), 16000, format="FLAC")
        return buffer.getvalue()

    rows = [{"audio": {"bytes": flac(16000 + i) if i % 7 else b"not audio", "path": None}, "text": str(i)}
            for i in range(40)]
    batches, cfg = Batches([(rows, list(range(40)))], 3, 1, 0, 1), TrainConfig()

    def seen(workers: int) -> list[tuple]:
        return [([len(a) for a in d.audios], [r["text"] for r in d.rows], d.unreadable)
                for d in decoded_batches(batches, 5, 20, cfg, workers)]

    in_process = seen(0)
    expected = [[rows[i] for _, i in spec] for spec in itertools.islice(batches.stream(0), 5, 25)]
    assert [texts for _, texts, _ in in_process] == [[r["text"] for r in b if int(r["text"]) % 7] for b in expected]
    assert [n for _, _, n in in_process] == [sum(int(r["text"]) % 7 == 0 for r in b) for b in expected]
    assert all(lengths == [16000 + int(t) for t in texts] for lengths, texts, _ in in_process)
    assert seen(3) == in_process
    decoded = next(decoded_batches(batches, 0, 1, cfg, 2))
    assert decoded.rows and all("audio" not in row for row in decoded.rows)
