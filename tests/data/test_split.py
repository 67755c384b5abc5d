"""Splitting transcripts into train / held-out problems by a hash of the problem id."""

import json

import pytest

from tirgrpo.data.records import Transcript, Turn, read_transcripts, transcript_to_dict
from tirgrpo.data.split import heldout_problems, problem_hash, split_transcripts
from tirgrpo.data.templates import SEED_BRIDGE
from tirgrpo.errors import TirgrpoError


def test_problem_hash_is_sha256_of_seed_and_id():
    # the hash is the digest of "0", NUL, "a" read as a big-endian integer
    import hashlib

    digest = hashlib.sha256(b"0\x00a").digest()
    assert problem_hash("a", 0) == int.from_bytes(digest, "big")
    assert problem_hash("a", 1) != problem_hash("a", 0)


def test_heldout_is_the_smallest_hashes_and_ignores_order_and_repeats():
    ids = [f"p{i}" for i in range(10)]
    held = heldout_problems(ids, 0.3, seed=0)
    assert len(held) == 3
    by_hash = sorted(ids, key=lambda p: problem_hash(p, 0))
    assert held == set(by_hash[:3])
    assert heldout_problems(list(reversed(ids)) + ids, 0.3, seed=0) == held  # order and repeats do not matter
    assert heldout_problems(ids, 0.3, seed=1) != held  # another seed, (here) another split


def test_heldout_keeps_both_sides_non_empty():
    assert len(heldout_problems(["a", "b"], 0.01)) == 1  # at least one held out
    assert len(heldout_problems(["a", "b", "c"], 1.0)) == 2  # at most all but one
    assert heldout_problems(["a"], 0.5) == set()  # one problem: all train
    assert heldout_problems(["a", "b"], 0.0) == set()


def _t(pid, sample):
    return Transcript(pid, sample, f"q{pid}", "1", "1", "P", SEED_BRIDGE, (Turn("\\boxed{1}", None, None, "eos", 1.0),))


def test_split_transcripts_writes_whole_problems_to_one_side(tmp_path):
    ts = [_t(f"p{i}", k) for i in range(5) for k in range(3)]
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(transcript_to_dict(t)) + "\n" for t in ts))
    counts = split_transcripts(src, tmp_path / "train.jsonl", tmp_path / "held.jsonl", 0.4, seed=0)
    assert counts == {"train_problems": 3, "heldout_problems": 2, "train_transcripts": 9, "heldout_transcripts": 6,
                      "extra_problems": 0, "extra_transcripts": 0}
    train, held = read_transcripts(tmp_path / "train.jsonl"), read_transcripts(tmp_path / "held.jsonl")
    assert {t.problem_id for t in held} == heldout_problems([t.problem_id for t in ts], 0.4)
    assert not {t.problem_id for t in train} & {t.problem_id for t in held}
    assert sorted(train + held, key=lambda t: (t.problem_id, t.sample)) == ts  # nothing lost or changed


def test_split_transcripts_refuses_an_empty_file_and_writes_nothing(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text("")
    with pytest.raises(TirgrpoError, match="no transcripts"):
        split_transcripts(src, tmp_path / "a.jsonl", tmp_path / "b.jsonl", 0.3)
    assert not (tmp_path / "a.jsonl").exists() and not (tmp_path / "b.jsonl").exists()


def test_split_transcripts_command(tmp_path, capsys):
    from tirgrpo.cli import main

    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(transcript_to_dict(_t(f"p{i}", 0))) + "\n" for i in range(4)))
    argv = ["data", "split-transcripts", "--input", str(src), "--train", str(tmp_path / "a.jsonl"),
            "--heldout", str(tmp_path / "b.jsonl"), "--heldout-fraction", "0.5", "--seed", "3"]
    assert main(argv) == 0
    assert "2 problems (2 transcripts) to" in capsys.readouterr().out
    assert {t.problem_id for t in read_transcripts(tmp_path / "b.jsonl")} == heldout_problems(
        [f"p{i}" for i in range(4)], 0.5, seed=3)
    with pytest.raises(SystemExit):  # argparse refuses a fraction outside [0, 1]
        main([*argv[:-4], "--heldout-fraction", "1.5"])


def _write(path, ts):
    path.write_text("".join(json.dumps(transcript_to_dict(t)) + "\n" for t in ts))
    return path


def test_extra_training_transcripts_join_the_training_side_only(tmp_path):
    src = _write(tmp_path / "test.jsonl", [_t(f"test-{i}", k) for i in range(5) for k in range(2)])
    extra = _write(tmp_path / "train.jsonl", [_t(f"train-{i}", k) for i in range(3) for k in range(4)])
    plain = split_transcripts(src, tmp_path / "a.jsonl", tmp_path / "b.jsonl", 0.4)
    counts = split_transcripts(src, tmp_path / "train-side.jsonl", tmp_path / "held.jsonl", 0.4,
                               extra_train=[extra])
    # the held-out side is what it is without the extras; 3 problems x 4 transcripts more to train
    assert read_transcripts(tmp_path / "held.jsonl") == read_transcripts(tmp_path / "b.jsonl")
    assert counts == {"train_problems": 3 + 3, "heldout_problems": 2, "train_transcripts": 6 + 12,
                      "heldout_transcripts": 4, "extra_problems": 3, "extra_transcripts": 12}
    assert plain["train_transcripts"] == 6
    train = read_transcripts(tmp_path / "train-side.jsonl")
    assert train[:6] == read_transcripts(tmp_path / "a.jsonl") and train[6:] == read_transcripts(extra)
    # with extras, a fraction of 1 holds out every problem of the input (without, one stays to train)
    all_held = split_transcripts(src, tmp_path / "c.jsonl", tmp_path / "d.jsonl", 1.0, extra_train=[extra])
    assert all_held["heldout_problems"] == 5 and all_held["train_transcripts"] == 12
    assert split_transcripts(src, tmp_path / "e.jsonl", tmp_path / "f.jsonl", 1.0)["heldout_problems"] == 4


def test_extra_training_transcripts_of_a_held_problem_are_refused_and_nothing_is_written(tmp_path):
    src = _write(tmp_path / "test.jsonl", [_t(f"p{i}", 0) for i in range(4)])
    extra = _write(tmp_path / "more.jsonl", [_t("q0", 0), _t("p2", 1)])
    with pytest.raises(TirgrpoError, match=r"more.jsonl: problem 'p2' \('qp2'\) is also in .*test.jsonl"):
        split_transcripts(src, tmp_path / "a.jsonl", tmp_path / "b.jsonl", 0.5, extra_train=[extra])
    assert not (tmp_path / "a.jsonl").exists() and not (tmp_path / "b.jsonl").exists()


def test_split_refuses_to_write_over_its_input_or_one_output_over_the_other(tmp_path):
    src = _write(tmp_path / "t.jsonl", [_t(f"p{i}", 0) for i in range(4)])
    before = src.read_text()
    with pytest.raises(TirgrpoError, match="--input and --train are the same file"):
        split_transcripts(src, src, tmp_path / "held.jsonl", 0.5)
    with pytest.raises(TirgrpoError, match="--train and --heldout are the same file"):
        split_transcripts(src, tmp_path / "x.jsonl", tmp_path / "sub" / ".." / "x.jsonl", 0.5)
    with pytest.raises(TirgrpoError, match="--heldout and --extra-train"):
        split_transcripts(src, tmp_path / "a.jsonl", tmp_path / "more.jsonl", 0.5,
                          extra_train=[_write(tmp_path / "more.jsonl", [_t("q", 0)])])
    assert src.read_text() == before and not (tmp_path / "held.jsonl").exists() and not (tmp_path / "x.jsonl").exists()


def test_problems_of_one_question_are_held_out_together(tmp_path):
    # p0..p9 with distinct questions, and "dup" asking p0's..p9's question under another id each
    ts = [_t(f"p{i}", 0) for i in range(10)]
    ts += [Transcript(f"dup{i}", 0, f"  Q{t.problem_id.upper()} ", "1", "1", "P", SEED_BRIDGE, t.turns)
           for i, t in enumerate(ts)]  # the same question up to case and spaces
    src = _write(tmp_path / "t.jsonl", ts)
    split_transcripts(src, tmp_path / "train.jsonl", tmp_path / "held.jsonl", 0.3)
    train, held = read_transcripts(tmp_path / "train.jsonl"), read_transcripts(tmp_path / "held.jsonl")
    key = lambda t: " ".join(t.question.lower().split())  # noqa: E731
    assert held and train and not {key(t) for t in train} & {key(t) for t in held}


def test_extra_training_transcripts_of_the_same_question_under_another_id_are_refused(tmp_path):
    src = _write(tmp_path / "test.jsonl", [_t(f"p{i}", 0) for i in range(3)])
    same_question = Transcript("train-7", 0, "qp1", "1", "1", "P", SEED_BRIDGE, _t("p1", 0).turns)
    extra = _write(tmp_path / "more.jsonl", [same_question])
    with pytest.raises(TirgrpoError, match="problem 'train-7' .* is also in"):
        split_transcripts(src, tmp_path / "a.jsonl", tmp_path / "b.jsonl", 0.5, extra_train=[extra])
