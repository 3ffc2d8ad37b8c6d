import random

import pytest
import torch

from lmtune.config import DataConfig
from lmtune.data.collate import Encoded, collate, epoch_batches, eval_batches
from lmtune.data.load import LabeledSet, label_name, label_order, load_splits, stratified_split
from lmtune.data.readers import from_lists


def test_collate_pads_dynamically_to_a_multiple_of_8():
    data = Encoded([[5, 6, 7], [5] * 10, [9]], labels=[1, 0, 1])
    b = collate(data, [0, 2], pad_id=0)
    assert b["input_ids"].shape == (2, 8)  # longest is 3, rounded up to 8
    assert b["input_ids"][0, :3].tolist() == [5, 6, 7] and b["input_ids"][0, 3:].eq(0).all()
    assert b["attention_mask"].sum(1).tolist() == [3, 1]
    assert b["labels"].tolist() == [1, 1]
    assert collate(data, [1], pad_id=0)["input_ids"].shape == (1, 16)


def test_epoch_batches_cover_every_row_once_and_are_seeded():
    lengths = [random.Random(i).randint(1, 60) for i in range(1000)]
    a = epoch_batches(lengths, 32, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(1000))
    assert a == epoch_batches(lengths, 32, seed=1, epoch=0)
    assert a != epoch_batches(lengths, 32, seed=1, epoch=1)
    assert a != epoch_batches(lengths, 32, seed=2, epoch=0)


def test_length_grouping_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(3, 80) for _ in range(4096)]

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    grouped = padded(epoch_batches(lengths, 32, 0, 0, group_by_length=True))
    shuffled = padded(epoch_batches(lengths, 32, 0, 0, group_by_length=False))
    assert grouped < 0.7 * shuffled
    assert sum(lengths) / grouped > 0.95  # nearly no padding left


def test_eval_batches_sorted_and_complete():
    lengths = [5, 1, 9, 3]
    batches = eval_batches(lengths, 3)
    assert batches == [[1], [3, 0, 2]]  # the partial batch holds the shortest rows


@pytest.mark.parametrize("value, name", [(1, "1"), (1.0, "1"), ("1", "1"), (" pos ", "pos"),
                                         (True, "true"), (None, None), ("", None),
                                         (float("nan"), None), ([1], None)])
def test_label_names_normalize(value, name):
    assert label_name(value) == name


def test_label_order_numeric_then_alpha():
    assert label_order({"10", "2", "1"}) == ["1", "2", "10"]
    assert label_order({"rotten", "fresh"}) == ["fresh", "rotten"]


def test_label_map_matches_sorted_labels():
    table = from_lists({"text": [f"t{i}" for i in range(60)],
                        "label": [["b", "a", "c"][i % 3] for i in range(60)]})
    s = load_splits(DataConfig(), seed=0, train_table=table)
    assert s.label_names == ["a", "b", "c"] and s.label2id == {"a": 0, "b": 1, "c": 2}


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = ["a"] * 800 + ["b"] * 200
    part = LabeledSet("x", [f"t{i}" for i in range(1000)], labels)
    rest, carved = stratified_split(part, {"validation": 0.1, "test": 0.1}, seed=3)
    for name, s in carved.items():
        assert len(s) == 100 and s.labels.count("b") == 20
    assert len(rest) == 800
    all_texts = rest.texts + carved["validation"].texts + carved["test"].texts
    assert sorted(all_texts) == sorted(part.texts)  # disjoint and complete
    again = stratified_split(part, {"validation": 0.1, "test": 0.1}, seed=3)[1]
    assert again["test"].texts == carved["test"].texts


def test_rotten_tomatoes_split_by_movie():
    from lmtune.data.builtin import rotten_tomatoes

    parts = rotten_tomatoes(seed=42)
    movies = {k: {r["movie"] for r in t.rows} for k, t in parts.items()}
    assert not movies["train"] & movies["test"] and not movies["train"] & movies["validation"]
    assert not movies["validation"] & movies["test"]
    texts = [r["text"] for t in parts.values() for r in t.rows]
    assert len(texts) == len(set(texts)) > 12_000  # reviews only, deduplicated
    assert {r["label"] for t in parts.values() for r in t.rows} == {"fresh", "rotten"}
    n = len(texts)
    for name, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs(len(parts[name].rows) / n - share) < 0.02
        fresh = sum(r["label"] == "fresh" for r in parts[name].rows) / len(parts[name].rows)
        assert 0.52 < fresh < 0.64  # about the corpus's 58% fresh in every split


def test_encoded_labels_tensor_dtype():
    b = collate(Encoded([[1, 2]], [0]), [0], 0)
    assert b["input_ids"].dtype == torch.long and b["labels"].dtype == torch.long


def test_eval_batches_respect_a_token_budget():
    from lmtune.data.collate import eval_batches

    lengths = [5, 100, 7, 60, 100, 3, 50]
    batches = eval_batches(lengths, batch_size=4, max_tokens=160)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 4 and len(b) * max(lengths[i] for i in b) <= 160 for b in batches)
    assert eval_batches(lengths, batch_size=3) == [[5], [0, 2, 6], [3, 4, 1]]
    assert eval_batches([], 4) == []


def test_eval_batches_budget_counts_the_padded_width():
    # 17-token rows are padded to 24: five of them fit 100 tokens unpadded (85) but not
    # padded (120), and the padded batch is what the model sees.
    lengths = [17] * 10 + [3] * 9
    data = Encoded([[1] * n for n in lengths], labels=[0] * len(lengths))
    batches = eval_batches(lengths, batch_size=64, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(collate(data, b, pad_id=0)["input_ids"].numel() <= 100 for b in batches)
    assert [len(b) for b in batches] == [7, 4, 4, 4]  # unpadded, 5 long rows would fit


def test_eval_batches_widest_batch_is_full_whatever_the_set_size():
    """The widest batch sets a pass's peak memory: it must be as large as the budget allows
    with 15 rows as with 1,005 (filled from the short end, it held the leftover row alone)."""
    for short in (10, 100, 1000):
        lengths = [8] * short + [64] * 5  # five 64-token rows; 4 fit the 256-token budget
        widest = eval_batches(lengths, batch_size=128, max_tokens=256)[-1]
        assert [lengths[i] for i in widest] == [64] * 4


def test_eval_batches_bound_the_attention_square():
    """rows x width**2 stays within max_square, so long rows come fewer to a batch; rows
    short enough stay bound by the token budget alone."""
    lengths = [128] * 20 + [16] * 40
    batches = eval_batches(lengths, batch_size=64, max_tokens=512, max_square=512 * 32)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    long = [b for b in batches if lengths[b[0]] == 128]
    assert [len(b) for b in long] == [1] * 20  # 4 rows fit 512 tokens, 1 fits the square
    assert sorted(len(b) for b in batches if lengths[b[0]] == 16) == [8, 32]  # 512 / 16


@pytest.mark.parametrize("n, world", [(5, 2), (4, 2), (1, 2), (7, 3), (0, 2)])
def test_rank_share_counts_each_item_once_with_as_many_per_rank(n, world):
    """Eval batches and validation prompts under several processes: each item is counted on
    exactly one rank; ranks with fewer take uncounted extras, so that FSDP/ZeRO-3 forwards
    (collectives) and `generate` calls line up."""
    from lmtune.distributed import rank_share

    items = [[i] for i in range(n)]
    per_rank = [rank_share(items, (r, world)) for r in range(world)]
    counted = sorted(x[0] for mine in per_rank for x, counts in mine if counts)
    assert counted == list(range(n))
    assert len({len(mine) for mine in per_rank}) == 1
    assert rank_share(items, None) == [(x, True) for x in items]


def test_generated_answers_come_back_in_input_order():
    from lmtune.eval.generation import merge

    parts = [[(0, "a"), (2, "c"), (4, "e")], [(1, "b"), (3, "d")]]
    assert merge(parts, 5) == ["a", "b", "c", "d", "e"]


def test_eval_bounds_the_square_only_under_eager_attention_even_when_wrapped():
    """DDP and DeepSpeed wrap the model (`.module`) and have no `.config` of their own."""
    from types import SimpleNamespace as NS

    from lmtune.eval.batched import batches_of

    data = Encoded([[1] * 128] * 40, labels=[0] * 40)
    eager = NS(config=NS(_attn_implementation="eager"))
    sdpa = NS(config=NS(_attn_implementation="sdpa"))
    rows = {name: max(map(len, batches_of(data, 64, m)))
            for name, m in [("eager", eager), ("ddp-eager", NS(module=eager)),
                            ("sdpa", sdpa), ("ddp-sdpa", NS(module=sdpa))]}
    # 4,096 tokens allow 32 rows of 128; 64 x 4,096 for rows x width**2 allows 16
    assert rows == {"eager": 16, "ddp-eager": 16, "sdpa": 32, "ddp-sdpa": 32}
