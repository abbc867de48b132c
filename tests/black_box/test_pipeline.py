"""The black-box pipeline layer: ROUGE-L novelty filter, response checks, bootstrapped generation
(the loop Self-Instruct, Alpaca and others share), resumption after an interrupted generation, bad
teacher output, a pipeline that keeps nothing, scoring and baselines. Each method's own pipeline,
end to end, is tested in its mirrored file (tests/black_box/instruction_following/test_<name>.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reference_impls.black_box.filters import NoveltyFilter, response_problem, rouge_tokens
from reference_impls.black_box.instruction_following._bootstrap import (
    GenerationSettings,
    answer_instructions,
    bootstrap_instructions,
)
from reference_impls.black_box.instruction_following.alpaca import alpaca_recipe
from reference_impls.black_box.pipeline import EVALUATIONS
from reference_impls.tasks import instructions as suite
from reference_impls.teachers.text import Completion
from tests.support.fakes import OracleTeacher, make_context, run_with_oracle

# ------------------------------------------------------------------------------ ROUGE-L novelty


def test_rouge_tokens_follow_rouge_score() -> None:
    assert rouge_tokens("rev up: abc =") == ["rev", "up", "abc"]
    assert rouge_tokens("Add: 12+3 =") == ["add", "12", "3"]


def test_novelty_threshold_is_inclusive_at_0_7() -> None:
    pool = " ".join("abcdefghij")  # 10 one-letter tokens
    novelty = NoveltyFilter([pool], threshold=0.7)
    seven_of_ten = " ".join("abcdefgxyz")  # LCS 7 of 10 and 10: F1 = 0.7 exactly
    assert novelty.max_similarity(seven_of_ten) == pytest.approx(0.7)
    assert novelty.admit(seven_of_ten)  # Self-Instruct rejects only *above* 0.7
    eight_of_ten = " ".join("abcdefghyz")
    assert NoveltyFilter([pool]).max_similarity(eight_of_ten) == pytest.approx(0.8)
    assert not NoveltyFilter([pool]).admit(eight_of_ten)
    # Admitted instructions join the pool: the same text again is now a duplicate.
    assert not novelty.admit(seven_of_ten) and len(novelty) == 2


def test_novelty_rejects_duplicates_and_accepts_new_tasks() -> None:
    novelty = NoveltyFilter(["rev: abc ="])
    assert not novelty.admit("rev: abc =")  # identical: ROUGE-L 1
    assert novelty.admit("sort up: xyz =")  # no shared token
    assert novelty.admit("rev: abd =")  # rev/abc vs rev/abd: F1 0.5
    with pytest.raises(ValueError, match="threshold"):
        NoveltyFilter(threshold=1.5)


def test_response_problems() -> None:
    def completion(text: str, reason: str = "stop") -> Completion:
        return Completion(text, reason)

    assert response_problem(completion("cba")) is None
    assert response_problem(completion("  ")) == "empty"
    assert response_problem(completion("cb", "length")) == "truncated"
    assert response_problem(completion("?! ;")) == "no content"


# ---------------------------------------------------------------------- bootstrapped generation


def test_bootstrap_keeps_only_novel_well_formed_instructions(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    settings = GenerationSettings(human_demos=3, machine_demos=1, requests_per_round=32, max_rounds=10)
    kept = bootstrap_instructions(context, 60, settings, tag="t")
    assert len(kept) == 60
    pool = [e.prompt for e in context.seeds]
    for example in kept:
        assert suite.parse_instruction(example.prompt) == example
        assert NoveltyFilter(pool).max_similarity(example.prompt) <= 0.7
        pool.append(example.prompt)
    stats = context.stats
    dropped = sum(v for k, v in stats.items() if k.startswith("t: dropped"))
    # Every generation is either kept or dropped for a named reason (the last round may stop early).
    assert stats["t: kept"] == 60 and stats["t: generated"] == 60 + dropped


def test_bootstrap_survives_bad_teacher_output(tmp_path: Path) -> None:
    # Every other generation is broken: empty, malformed, cut off, or punctuation.
    broken = iter(["", "rev rev: ab =", "}{", "sort: ABC =", "?!"] * 10_000)
    calls = {"n": 0}

    def mistakes(prompt: str, text: str) -> str:
        calls["n"] += 1
        return text if calls["n"] % 2 else next(broken)

    context = make_context(tmp_path, OracleTeacher(mistakes=mistakes))
    settings = GenerationSettings(requests_per_round=40, max_rounds=5)
    kept = bootstrap_instructions(context, 30, settings, tag="t")
    assert len(kept) == 30
    assert context.stats["t: dropped (empty)"] > 0
    assert context.stats["t: dropped (malformed instruction)"] > 0
    assert context.stats["t: dropped (no content)"] > 0


def test_answers_drop_unusable_responses_and_report_accuracy(tmp_path: Path) -> None:
    instructions = suite.make_instructions("train", 12)
    bad = {instructions[0].prompt: "", instructions[1].prompt: "x"}
    teacher = OracleTeacher(
        mistakes=lambda prompt, text: bad.get(prompt, text),
        finish_reason=lambda prompt, text: "length" if prompt == instructions[1].prompt else "stop",
    )
    context = make_context(tmp_path, teacher)
    examples = answer_instructions(context, instructions, tag="a")
    assert len(examples) == 10
    assert context.stats["a: dropped (empty)"] == 1 and context.stats["a: dropped (truncated)"] == 1
    assert context.stats["a: teacher answers correct"] == 1.0  # the oracle is always right
    assert examples[0].segments == ((instructions[2].prompt, False), (instructions[2].response, True))


def test_interrupted_generation_resumes_without_repeated_or_lost_requests(tmp_path: Path) -> None:
    class Crash(RuntimeError):
        pass

    class CrashingOracle(OracleTeacher):
        def iter_generate(self, requests):
            for item in super().iter_generate(requests):
                if self.calls > 70:
                    raise Crash
                yield item

    settings = GenerationSettings(requests_per_round=50, max_rounds=4)
    first = CrashingOracle()
    with pytest.raises(Crash):
        bootstrap_instructions(make_context(tmp_path, first), 80, settings, tag="t")
    resumed = OracleTeacher()
    kept = bootstrap_instructions(make_context(tmp_path, resumed), 80, settings, tag="t")
    # An uninterrupted run in a fresh cache, for comparison.
    reference = OracleTeacher()
    expected = bootstrap_instructions(make_context(tmp_path / "fresh", reference), 80, settings, tag="t")
    assert kept == expected
    # The crash hit round 2 (calls 51-100); round 1's 50 answers had been cached, so the resumed
    # run asked everything except them.
    cached = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert reference.calls - resumed.calls == 50
    keys = [line["key"] for line in cached]
    assert len(keys) == len(set(keys)) == reference.calls  # no duplicate, none lost


# ------------------------------------------------------------------------------- end to end



def test_pipeline_that_keeps_nothing_says_why(tmp_path: Path) -> None:
    silent = OracleTeacher(mistakes=lambda prompt, text: "")
    with pytest.raises(ValueError, match=r"kept no training data.*dropped \(empty\)"):
        run_with_oracle(tmp_path, alpaca_recipe(num_instructions=5), silent)


# ------------------------------------------------------------------------------ scoring and baselines


def test_batched_response_nll_equals_one_sequence_at_a_time(tmp_path: Path) -> None:
    import torch

    from reference_impls.core.tokenizer import encode_pair

    context = make_context(tmp_path)
    model = context.new_student()
    pairs = [(e.prompt, e.response) for e in suite.make_instructions("train", 9)] + [("", "abc")]
    batched = context.response_nll(model, pairs)
    for (prompt, response), value in zip(pairs, batched, strict=True):
        ids, labels = encode_pair(context.tokenizer, prompt, response)
        ids, labels = ids[:-1], labels[:-1]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1]
        targets = torch.tensor(labels[1:])
        mask = targets != -100
        direct = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        assert value == pytest.approx(float(direct), abs=1e-4)


@pytest.mark.parametrize("name", sorted(EVALUATIONS))
def test_baseline_trains_on_seed_data_in_the_evaluated_format(name: str) -> None:
    evaluation = EVALUATIONS[name]
    data = evaluation.baseline_data(suite.seed_tasks(24), 24, 0)
    assert len(data) == 24
    tests = evaluation.examples(40)
    test_prompts = {e.prompt for e in tests}
    for example in data:
        prompt = example.segments[0][0]
        assert prompt not in test_prompts  # human-written seeds, never the held-out items
    if name == "conversations":
        assert all(len(e.segments) >= 4 for e in data)  # at least two turns each
        assert all(not supervised for _, supervised in data[0].segments[::2])  # user turns masked
    if name == "find":
        assert {e.segments[0][0].split(":")[0] for e in data} & {e.prompt.split(":")[0] for e in tests}
    if name in ("explained", "brief"):
        system = suite.EXPLAIN if name == "explained" else suite.BRIEF
        assert all(e.segments[0][0].startswith(system + suite.TURN_SEPARATOR) for e in data)
        assert all(t.prompt.startswith(system + suite.TURN_SEPARATOR) for t in tests)
