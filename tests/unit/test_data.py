"""launcher.train.data: loading, masking, packing, batching, caching."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.errors import JobError
from launcher.spec import DataSpec, JobSpec
from launcher.train.data import (
    IGNORE_INDEX,
    BatchSchedule,
    collate,
    label_tokens,
    load_rows,
    pack,
    packed_attention_supported,
    prepare_data,
    split_train_eval,
    tokenize_rows,
)
from tests.helpers import make_char_tokenizer

ROWS = [{"prompt": f"q{i}?", "response": f"a{i}"} for i in range(6)]


@pytest.fixture(scope="module")
def tok():
    return make_char_tokenizer()


def write_jsonl(path: Path, rows: list, blank_after_first: bool = False) -> Path:
    lines = [json.dumps(r) for r in rows]
    if blank_after_first:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv", "folder", "folder_dict"])
def test_each_format_loads(tmp_path, fmt):
    import datasets

    p = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        write_jsonl(p, ROWS)
    elif fmt == "json":
        p.write_text(json.dumps(ROWS))
    elif fmt == "parquet":
        datasets.Dataset.from_list(ROWS).to_parquet(str(p))
    elif fmt == "csv":
        datasets.Dataset.from_list(ROWS).to_csv(str(p), index=False)
    elif fmt == "folder":
        datasets.Dataset.from_list(ROWS).save_to_disk(str(p))
    else:
        datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(p))
    rows = load_rows(DataSpec(format="instruction"), str(p))
    assert [(r["prompt"], r["response"]) for r in rows] == [(r["prompt"], r["response"]) for r in ROWS]
    assert len(load_rows(DataSpec(format="instruction", num_samples=4), str(p))) == 4


def test_missing_field_names_file_line_and_fix(tmp_path):
    rows = [dict(ROWS[0]), dict(ROWS[1]), {"prompt": "only"}]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(JobError) as e:
        load_rows(DataSpec(format="instruction"), str(p))
    (line,) = e.value.lines
    assert f"{p}:3:" in line and "'response'" in line and "data.response_field" in line
    # a blank line shifts the file line, not the row
    p2 = write_jsonl(tmp_path / "e.jsonl", rows, blank_after_first=True)
    with pytest.raises(JobError, match=r"e\.jsonl:4: missing field 'response'"):
        load_rows(DataSpec(format="instruction"), str(p2))
    # other formats: row number
    p3 = tmp_path / "d.json"
    p3.write_text(json.dumps([{"text": "x"}, {"txt": "y"}]))
    with pytest.raises(JobError, match=r"d\.json: row 2: missing field 'text'.*data\.text_field"):
        load_rows(DataSpec(format="text"), str(p3))


def test_invalid_json_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n')
    with pytest.raises(JobError, match=r"d\.jsonl:3: not valid JSON"):
        load_rows(DataSpec(format="text"), str(p))


def test_other_bad_inputs(tmp_path):
    with pytest.raises(JobError, match=r"data\.path: .*nope\.jsonl: no such file or folder"):
        load_rows(DataSpec(), str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(JobError, match="unsupported file type '.txt'"):
        load_rows(DataSpec(), str(tmp_path / "d.txt"))
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(JobError, match="empty"):
        load_rows(DataSpec(), str(tmp_path / "e.jsonl"))
    for name, text in (("f.json", "[]"), ("g.jsonl", "\n\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(JobError, match="empty"):
            load_rows(DataSpec(), str(tmp_path / name))
    p = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(JobError, match=r"c\.jsonl:1: .*no assistant message"):
        load_rows(DataSpec(format="chat"), str(p))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(JobError, match="save_to_disk"):
        load_rows(DataSpec(), str(tmp_path / "emptydir"))


# --------------------------------------------------------------------------- masking


def test_instruction_masking(tok):
    (ex,) = tokenize_rows([{"prompt": "2+2=", "response": "4"}], tok, DataSpec(format="instruction"))
    ids, labels = ex["input_ids"], ex["labels"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:-1]) == "2+2=4"
    trained = [t for t in labels if t != IGNORE_INDEX]
    assert trained == tok.convert_tokens_to_ids(["4"]) + [tok.eos_token_id]
    assert labels[:5] == [IGNORE_INDEX] * 5 and labels[5:] == ids[5:]


def test_text_format_trains_everything(tok):
    (ex,) = tokenize_rows([{"text": "abc"}], tok, DataSpec(format="text"))
    assert ex["labels"] == ex["input_ids"] and len(ex["input_ids"]) == 5  # bos abc eos


def test_chat_masking(tok):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "1+1"},
            {"role": "assistant", "content": "2"}]
    (ex,) = tokenize_rows([{"messages": msgs}], tok, DataSpec(format="chat"))
    trained = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert tok.decode(trained) == "yo<|im_end|>2<|im_end|>"
    assert len(ex["labels"]) == len(ex["input_ids"])


def test_chat_needs_template():
    plain = make_char_tokenizer(chat_template=None)
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    with pytest.raises(JobError, match="chat template"):
        tokenize_rows(rows, plain, DataSpec(format="chat"))


def test_truncation_counts_and_drops(tok, tmp_path):
    rows = [{"prompt": "x" * 20, "response": "y" * 5}, {"prompt": "p", "response": "r" * 20}, ROWS[0]]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = JobSpec(data=DataSpec(format="instruction", max_seq_len=10, eval_fraction=0.0, packing=False))
    out = prepare_data(spec, tok, str(p), tmp_path / "cache")
    assert out.stats.truncated == 2 and out.stats.dropped == 1 and out.stats.documents == 2
    assert all(len(r["input_ids"]) <= 10 for r in out.train)


# --------------------------------------------------------------------------- split, pack, collate


def test_split_train_eval():
    xs = list(range(100))
    tr, ev = split_train_eval(xs, 0.1, seed=3)
    assert len(ev) == 10 and sorted(tr + ev) == xs
    assert split_train_eval(xs, 0.1, seed=3) == (tr, ev)
    assert split_train_eval(xs, 0.1, seed=4)[1] != ev
    assert len(split_train_eval([1, 2], 0.01, 0)[1]) == 1
    assert split_train_eval([1], 0.5, 0) == ([1], [])
    assert split_train_eval(xs, 0.0, 0) == (xs, [])


def _docs(lengths, start=10):
    docs, t = [], start
    for n in lengths:
        ids = list(range(t, t + n))
        docs.append({"input_ids": ids, "labels": list(ids)})
        t += n
    return docs


def test_pack_every_token_once():
    docs = _docs([5, 3, 9, 1, 4, 8, 2])
    rows = pack(docs, 8)
    flat = [t for r in rows for t in r["input_ids"]]
    assert flat == [t for d in docs for t in d["input_ids"]]
    assert all(len(r["input_ids"]) == 8 for r in rows[:-1]) and 0 < len(rows[-1]["input_ids"]) <= 8
    assert sum(r["n_docs"] for r in rows) == len(docs)
    # position_ids: 0 at every document start and every row start, +1 otherwise
    starts = {d["input_ids"][0] for d in docs}
    for r in rows:
        assert len(r["position_ids"]) == len(r["labels"]) == len(r["input_ids"])
        for i, (tid, pos, lab) in enumerate(zip(r["input_ids"], r["position_ids"], r["labels"])):
            if tid in starts:
                assert pos == 0 and lab == IGNORE_INDEX
            elif i == 0:
                assert pos == 0  # continuation of a split document
            else:
                assert pos == r["position_ids"][i - 1] + 1 and lab == tid


def test_collate_padding_and_counts():
    rows = pack(_docs([3, 2]), 8) + [{"input_ids": [1, 2], "labels": [IGNORE_INDEX, 2]}]
    b = collate(rows, pad_id=0)
    assert b["input_ids"].shape == (2, 5)
    assert b["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert b["labels"][1].tolist() == [IGNORE_INDEX, 2] + [IGNORE_INDEX] * 3
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert (b["n_tokens"], b["n_padding"]) == (7, 3)
    # row 0: labels [-100, 11, 12, -100, 14] -> 3 after the shift; row 1: 1
    assert b["n_label_tokens"] == 4 == sum(label_tokens(r) for r in rows)
    assert collate(rows, pad_id=0, pad_to=8)["input_ids"].shape == (2, 8)
    assert b["packed"] and not collate(rows[1:], pad_id=0)["packed"]


def test_packed_attention_equivalence():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 64, (7,), generator=g).tolist(), torch.randint(0, 64, (9,), generator=g).tolist()
    (row,) = pack([{"input_ids": a, "labels": a}, {"input_ids": b, "labels": b}], 16)
    (short,) = pack([{"input_ids": b[:4], "labels": b[:4]}, {"input_ids": b, "labels": b}], 16)
    short = {k: (v[:13] if isinstance(v, list) else v) for k, v in short.items()}  # b cut to 9 tokens
    batch = collate([row, short], pad_id=0)  # row 1: 13 real tokens, 3 padding
    assert batch["packed"] and batch["n_padding"] == 3
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(cfg, attn_implementation=impl).float().train()
        assert packed_attention_supported(model)
        with torch.no_grad():
            alone = model(torch.tensor([b]), use_cache=False).logits[0]
            packed = model(batch["input_ids"], position_ids=batch["position_ids"], attention_mask=None,
                           use_cache=False).logits
            torch.testing.assert_close(packed[0, 7:], alone, atol=1e-5, rtol=0)
            # padding (its own pseudo-document) does not disturb the real tokens before it
            torch.testing.assert_close(packed[1, 4:13], alone[:9], atol=1e-5, rtol=0)
            # the pitfall: with the config default use_cache=True a cache is made and the
            # documents attend to each other
            leaky = model(batch["input_ids"], position_ids=batch["position_ids"]).logits
            assert (leaky[0, 7:] - alone).abs().max() > 1e-3
    model.config._attn_implementation = "flash_attention_2"
    assert packed_attention_supported(model, micro_batch_size=1)
    assert not packed_attention_supported(model, micro_batch_size=2)


# --------------------------------------------------------------------------- schedule


def test_batch_schedule_same_global_batch_across_world_sizes():
    n, epochs = 50, 2
    a = BatchSchedule(n, world_size=1, micro_batch_size=4, grad_accum_steps=2, epochs=epochs, seed=7)
    b = BatchSchedule(n, world_size=2, micro_batch_size=2, grad_accum_steps=2, epochs=epochs, seed=7)
    c = BatchSchedule(n, world_size=4, micro_batch_size=1, grad_accum_steps=2, epochs=epochs, seed=7)
    assert a.global_batch == b.global_batch == c.global_batch == 8
    assert a.steps_per_epoch == 6 and a.total_steps() == 12 and a.total_steps(max_steps=5) == 5
    for step in range(a.total_steps()):
        sets = []
        for s in (a, b, c):
            got = [i for m in range(s.grad_accum_steps) for r in range(s.world_size)
                   for i in s.rows_for(step, m, r)]
            assert len(got) == len(set(got)) == 8
            sets.append(set(got))
        assert sets[0] == sets[1] == sets[2] == set(a.global_rows(step))
    for e in range(epochs):
        used = [i for st in range(e * 6, (e + 1) * 6) for i in a.global_rows(st)]
        assert len(used) == len(set(used)) == 48 and all(0 <= i < n for i in used)
        assert a.epoch_of(e * 6) == e == a.epoch_of(e * 6 + 5)
    assert a.global_rows(0) != a.global_rows(6)  # new permutation each epoch


def test_batch_schedule_replays_general_rows_in_every_batch():
    """data.replay: 2 of every 8 rows come from the 5 general rows (indices 30..34), the task's 30
    rows fill the rest (an epoch is 30 // 6 = 5 steps), whatever the layout; a pass over the general
    rows may end mid-batch; the same step always takes the same rows (a resume takes them too)."""
    kw = dict(epochs=2, seed=3, replay_rows=5, replay_per_step=2)
    a = BatchSchedule(30, world_size=1, micro_batch_size=4, grad_accum_steps=2, **kw)
    b = BatchSchedule(30, world_size=2, micro_batch_size=2, grad_accum_steps=2, **kw)
    assert a.task_per_step == 6 and a.steps_per_epoch == 5 and a.total_steps() == 10
    general = []
    for step in range(a.total_steps()):
        rows = a.global_rows(step)
        assert len(rows) == len(set(rows)) == 8
        g = [i for i in rows if i >= 30]
        assert len(g) == 2 and all(30 <= i < 35 for i in g)
        general += g
        assert set(rows) == {i for m in range(2) for r in range(2) for i in b.rows_for(step, m, r)}
        again = BatchSchedule(30, world_size=1, micro_batch_size=4, grad_accum_steps=2, **kw)
        assert again.global_rows(step) == rows
    for k in range(0, 20, 5):  # every pass over the general rows visits each once
        assert sorted(general[k:k + 5]) == [30, 31, 32, 33, 34]
    task = [i for st in range(5) for i in a.global_rows(st) if i < 30]
    assert sorted(task) == list(range(30))


def test_batch_schedule_too_small():
    with pytest.raises(JobError, match="needs 16"):
        BatchSchedule(10, world_size=2, micro_batch_size=4, grad_accum_steps=2, epochs=1, seed=0)


# --------------------------------------------------------------------------- cache


def test_prepare_data_cache(tok, tmp_path):
    rows = [{"text": "hello world " * (i % 5 + 1)} for i in range(40)]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = JobSpec(data=DataSpec(format="text", max_seq_len=32, eval_fraction=0.1))
    cache = tmp_path / "cache"
    first = prepare_data(spec, tok, str(p), cache)
    assert not first.cache_hit and first.stats.packed and first.stats.eval_documents == 4
    assert first.stats.documents == 40 and first.stats.train_documents == 36
    assert sum(r["n_docs"] for r in first.train) == 36
    assert first.stats.train_tokens == sum(len(r["input_ids"]) for r in first.train)
    assert first.stats.train_label_tokens == sum(label_tokens(r) for r in first.train)
    second = prepare_data(spec, tok, str(p), cache)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert (second.train, second.eval, second.stats) == (first.train, first.eval, first.stats)
    other = JobSpec(data=DataSpec(format="text", max_seq_len=48, eval_fraction=0.1))
    third = prepare_data(other, tok, str(p), cache)
    assert not third.cache_hit and third.cache_path != first.cache_path
    write_jsonl(p, rows[:-1])  # data content is part of the key
    assert not prepare_data(spec, tok, str(p), cache).cache_hit
    assert not list(cache.glob("*.tmp"))


def test_prepare_data_eval_split_matches_raw_split(tok, tmp_path):
    """The eval rows are load_rows + split_train_eval on the raw rows, even when tokenizing drops some."""
    rows = [{"prompt": ("x" * 40 if i % 3 == 0 else f"p{i}"), "response": f"r{i}"} for i in range(30)]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = JobSpec(data=DataSpec(format="instruction", max_seq_len=16, eval_fraction=0.2, packing=False))
    out = prepare_data(spec, tok, str(p), tmp_path / "cache")
    assert out.stats.dropped == 10
    _, ev_raw = split_train_eval(load_rows(spec.data, str(p)), 0.2, spec.train.seed)
    kept = [r for r in ev_raw if len(r["prompt"]) < 40]
    assert [tok.decode([t for t in r["labels"] if t != IGNORE_INDEX][:-1]) for r in out.eval] == \
        [r["response"] for r in kept]


def test_prepared_rows_are_memory_mapped_not_lists(tok, tmp_path):
    """Every rank maps the cache and reads a row at a time: no rank holds the data set as lists."""
    import numpy as np

    rows = [{"text": "hello world " * (i % 5 + 1)} for i in range(40)]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = JobSpec(data=DataSpec(format="text", max_seq_len=32, eval_fraction=0.1))
    outs = [prepare_data(spec, tok, str(p), tmp_path / "cache") for _ in range(2)]
    assert [o.cache_hit for o in outs] == [False, True]  # the process that builds it, one that finds it
    for out in outs:
        for split in (out.train, out.eval):
            assert not isinstance(split, list) and len(split) > 0
            arrays = split.arrays
            assert set(arrays) == {"input_ids", "labels", "position_ids", "offsets", "n_docs"}
            for a in arrays.values():
                assert isinstance(a, np.memmap) and not a.flags.writeable
                assert Path(a.filename).parent == Path(out.cache_path)
            assert arrays["input_ids"].dtype == np.int32  # the char tokenizer's ids fit
        row = out.train[0]
        assert set(row) == {"input_ids", "labels", "position_ids", "n_docs"}
        for k in ("input_ids", "labels", "position_ids"):
            assert type(row[k]) is list and type(row[k][0]) is int
        assert type(row["n_docs"]) is int


def test_rows_slicing_and_equality(tmp_path):
    from launcher.train.data import Rows
    from launcher.train.data.rows import open_rows, write_rows

    rows = pack(_docs([5, 3, 9, 1, 4, 8, 2, 6, 7]), 8)
    rows[2]["input_ids"][1] = 2 ** 40  # too big for int32: that split is stored as int64
    write_rows(tmp_path, "train", rows)
    write_rows(tmp_path, "eval", [])
    seq, empty = open_rows(tmp_path, "train"), open_rows(tmp_path, "eval")
    assert isinstance(seq, Rows) and len(seq) == len(rows) > 4 and len(empty) == 0 and not empty
    assert seq == rows and rows == seq and list(seq) == rows and empty == [] and seq != empty
    assert seq[2]["input_ids"][1] == 2 ** 40 and seq[-1] == rows[-1] and seq[0] == rows[0]
    for s in (slice(None, 1), slice(2, 5), slice(1, None, 2), slice(None, None, -1), slice(10, 20)):
        assert seq[s] == rows[s] and len(seq[s]) == len(rows[s])
    world = 3
    assert [r for rank in range(world) for r in seq[rank::world]] == \
        [r for rank in range(world) for r in rows[rank::world]]
    assert seq[1::2][1:3] == rows[1::2][1:3] and seq[1::2][-1] == rows[1::2][-1]
    with pytest.raises(IndexError):
        seq[len(rows)]
    with pytest.raises(TypeError):
        seq[0] = rows[0]
    changed = [dict(r) for r in rows]
    changed[3] = {**changed[3], "labels": [IGNORE_INDEX] * len(changed[3]["labels"])}
    assert seq != changed and seq != rows[:-1] and seq[:-1] == rows[:-1]
    got = seq[0]
    got["input_ids"].append(99)  # rows are fresh copies: the storage is read-only
    assert seq[0] == rows[0] and seq[0]["input_ids"] != got["input_ids"]
    assert sum(label_tokens(r) for r in seq) == sum(label_tokens(r) for r in rows)
    a, b = collate(seq[3:6], pad_id=0), collate(rows[3:6], pad_id=0)
    for k in ("input_ids", "labels", "position_ids", "attention_mask"):
        assert a[k].tolist() == b[k].tolist()
    assert {k: a[k] for k in ("n_tokens", "n_padding", "n_label_tokens", "n_docs", "packed")} == \
        {k: b[k] for k in ("n_tokens", "n_padding", "n_label_tokens", "n_docs", "packed")}


def test_prepare_data_rebuilds_a_torn_cache(tok, tmp_path):
    rows = [{"text": "hello world " * (i % 5 + 1)} for i in range(40)]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = JobSpec(data=DataSpec(format="text", max_seq_len=32, eval_fraction=0.1))
    first = prepare_data(spec, tok, str(p), tmp_path / "cache")
    expected = (list(first.train), list(first.eval), first.stats)
    folder = Path(first.cache_path)
    del first  # unmap before the files are cut
    npy = folder / "train_input_ids.npy"
    npy.write_bytes(npy.read_bytes()[:-40])
    again = prepare_data(spec, tok, str(p), tmp_path / "cache")
    assert not again.cache_hit and again.cache_path == str(folder)
    assert (again.train, again.eval, again.stats) == expected
    (folder / "stats.json").unlink()
    assert not prepare_data(spec, tok, str(p), tmp_path / "cache").cache_hit
    hit = prepare_data(spec, tok, str(p), tmp_path / "cache")
    assert hit.cache_hit and (hit.train, hit.eval, hit.stats) == expected
    assert sorted(x.name for x in (tmp_path / "cache").iterdir()) == [folder.name, folder.name + ".lock"]


def test_packing_problem_names_what_to_change():
    from launcher.facts.packing import packing_problem

    assert packing_problem("sdpa", 8, has_detection=True) is None
    assert packing_problem("eager", 1, has_detection=True) is None
    assert packing_problem("flash_attention_2", 1, has_detection=True) is None
    fa = packing_problem("flash_attention_2", 4, has_detection=True)
    assert fa.startswith("data.packing: flash_attention_2 keeps packed documents apart only at micro batch 1")
    assert "train.micro_batch_size=4" in fa and "data.packing=false" in fa
    old = packing_problem("sdpa", 1, has_detection=False)
    assert "does not find packed documents in position_ids (transformers >= 4.56 does)" in old
    assert packing_problem("sdpa", 1) is None, "the installed transformers detects packed documents"


def test_the_store_gives_another_run_the_data_without_loading_the_tokenizer(tmp_path):
    """Data prepared for one run is linked into the next run's cache from the machine-wide store
    (same files, tokenizer folder and data settings), in a process that never imports transformers
    nor datasets; a changed tokenizer file misses."""
    import os
    import subprocess
    import sys

    tok_dir = tmp_path / "tok"
    make_char_tokenizer(tok_dir)
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello world " * (i % 5 + 1)} for i in range(40)])
    spec = JobSpec(data=DataSpec(format="text", max_seq_len=32, eval_fraction=0.1))
    store = tmp_path / "store"
    first = prepare_data(spec, str(tok_dir), str(p), tmp_path / "run1" / "cache", store=store)
    assert not first.cache_hit and [x.name for x in store.iterdir()] == [Path(first.cache_path).name]
    assert not prepare_data(spec, str(tok_dir), str(p), tmp_path / "run0" / "cache").cache_hit  # no store
    code = (
        "import sys; from pathlib import Path; from launcher.spec import DataSpec, JobSpec; "
        "from launcher.train.data import prepare_data; "
        "spec = JobSpec(data=DataSpec(format='text', max_seq_len=32, eval_fraction=0.1)); "
        f"out = prepare_data(spec, {str(tok_dir)!r}, {str(p)!r}, Path({str(tmp_path / 'run2' / 'cache')!r}), "
        f"store=Path({str(store)!r})); "
        "print(out.cache_hit, len(out.train), out.cache_path, 'transformers' in sys.modules, 'datasets' in sys.modules)"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    hit, rows, path, transformers, datasets = got.stdout.split()
    assert (hit, int(rows), transformers, datasets) == ("True", len(first.train), "False", "False"), got.stderr[-2000:]
    a, b = Path(first.cache_path) / "train_input_ids.npy", Path(path) / "train_input_ids.npy"
    assert a.read_bytes() == b.read_bytes() and b.stat().st_ino == (store / a.parent.name / a.name).stat().st_ino
    (tok_dir / "tokenizer_config.json").write_text((tok_dir / "tokenizer_config.json").read_text() + "\n")
    assert not prepare_data(spec, str(tok_dir), str(p), tmp_path / "run3" / "cache", store=store).cache_hit
    assert len(list(store.iterdir())) == 2
