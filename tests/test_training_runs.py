"""The stage plan both tiny recipes share (bench.training.runs): curriculum phases, then the full mix."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.errors import DataError
from bench.training.runs import (
    REPOSITORY,
    drawn_beyond_mix,
    example_sets,
    paper_stages,
    parse_curriculum,
    parse_mix,
    portable_paths,
    write_recipe,
)


@dataclasses.dataclass(frozen=True)
class _Recipe:
    stage1_steps: int = 10
    stage2_steps: int = 30
    stage1_lr: float = 1e-3
    stage2_lr: float = 2e-3
    batch_size: int = 4
    warmup_steps: int = 8
    curriculum: tuple[tuple[str, int], ...] = (("classification", 6), ("pope", 0), ("rec", 5))


def test_curriculum_phases_open_stage_two_each_on_its_own_kind() -> None:
    stages = paper_stages(_Recipe(), ("connector.",), ("llm.",))
    assert [(s.name, s.data, s.steps) for s in stages] == [
        ("stage1", "all", 10), ("stage2-classification", "classification", 6), ("stage2-rec", "rec", 5),
        ("stage2", "all", 30)]  # a phase of 0 steps is left out
    assert stages[0].trainable == ("connector.",)
    assert all(s.trainable == ("connector.", "llm.") for s in stages[1:])
    assert [s.warmup_steps for s in stages] == [5, 3, 2, 8]  # at most half of a stage
    assert [s.lr for s in stages] == [1e-3, 2e-3, 2e-3, 2e-3]
    assert [s.name for s in paper_stages(_Recipe(curriculum=()), ("c.",), ("l.",))] == ["stage1", "stage2"]


def test_example_sets_hold_every_conversation_of_each_kind() -> None:
    base = [SimpleNamespace(kind=k) for k in ("pope", "rec", "pope", "classification")]
    mixed = base[:2]
    sets = example_sets(base, mixed)
    assert sets["all"] is mixed
    assert sets["pope"] == [base[0], base[2]] and sets["rec"] == [base[1]]
    assert sets["classification"] == [base[3]] and sets["caption"] == []
    union = example_sets(base, mixed, ["classification+pope", "rec"])["classification+pope"]
    assert union == [base[3], base[0], base[2]]  # every conversation of either kind
    with pytest.raises(DataError, match="phase 'caption': the training data has no caption conversations"):
        example_sets(base, mixed, ["caption"])  # a data root without captions: a clear error, not a traceback


def test_parse_curriculum() -> None:
    assert parse_curriculum("classification=1000, pope=5") == (("classification", 1000), ("pope", 5))
    assert parse_curriculum("none") == () and parse_curriculum("") == ()
    assert parse_curriculum("classification=9,classification + pope=4") == (
        ("classification", 9), ("classification+pope", 4))
    for bad in ("classification", "dance=3", "pope=-1", "pope=x", "pope+dance=3", "pope+pope=3"):
        with pytest.raises(ValueError, match="KIND=STEPS"):
            parse_curriculum(bad)
    with pytest.raises(ValueError, match="pope already has a phase"):
        parse_curriculum("pope=2,rec=1,pope=3")  # two stages named stage2-pope would clash


def test_drawn_beyond_mix_is_what_stages_other_than_the_mix_draw_from() -> None:
    sets = {"all": ["m1", "m2"], "classification": ["c1", "c2"], "rec": ["r1"], "pope": ["p1"]}
    stages = paper_stages(_Recipe(), ("c.",), ("l.",))  # curriculum phases classification and rec
    assert drawn_beyond_mix(sets, stages) == ["c1", "c2", "r1"]  # not the mix, not the unused pope
    assert drawn_beyond_mix(sets, paper_stages(_Recipe(curriculum=()), ("c.",), ("l.",))) == []


def test_a_runs_tokenizer_is_fixed_at_its_first_call(tmp_path: Path) -> None:
    """Word ids follow word frequency: a later call with other conversations must not renumber them."""
    from adapters.rgpt.processing_rgpt import build_word_tokenizer, load_tokenizer
    from bench.training.runs import run_tokenizer

    first = run_tokenizer(tmp_path, ["a ring", "a ring", "the star"], build_word_tokenizer, load_tokenizer)
    assert (tmp_path / "tokenizer.json").is_file()
    rebuilt = build_word_tokenizer(["the star", "the star", "the star", "a ring"])  # other frequencies
    assert rebuilt.convert_tokens_to_ids("star") != first.convert_tokens_to_ids("star")
    again = run_tokenizer(tmp_path, ["the star", "the star", "the star", "a ring"], build_word_tokenizer,
                          load_tokenizer)
    assert again.get_vocab() == first.get_vocab()
    with pytest.raises(DataError, match=r"tokenizer.json: the training conversations have 1 words .*\(square\)"):
        run_tokenizer(tmp_path, ["the square"], build_word_tokenizer, load_tokenizer)


def test_parse_mix() -> None:
    assert parse_mix("caption:refcocog=20000, rec=8000,uniqueness=0") == (
        ("caption:refcocog", 20000), ("rec", 8000), ("uniqueness", 0))
    for bad in ("captions=3", "rec", "rec=-1", "rec=two"):
        with pytest.raises(ValueError, match="KIND=COUNT or KIND:DATASET=COUNT"):
            parse_mix(bad)
    with pytest.raises(ValueError, match="rec is already in the mix"):
        parse_mix("rec=1,rec=2")


def test_training_only_kinds_add_words_but_no_word_order(tmp_path: Path) -> None:
    """Uniqueness questions (no evaluation asks them) leave a run's tokenizer as the evaluated kinds
    number it, so adding that kind did not change the runs before it; words only they use are added."""
    from adapters.rgpt.processing_rgpt import build_word_tokenizer, load_tokenizer
    from bench.synthetic import default_suite_dir
    from bench.training.conversations import all_texts, build_conversations, vocabulary_texts
    from bench.training.runs import run_tokenizer

    base = build_conversations(default_suite_dir())
    evaluated, training_only = vocabulary_texts(base)
    assert training_only and len(evaluated) + len(training_only) == len(all_texts(base))
    tokenizer = run_tokenizer(tmp_path / "a", evaluated, build_word_tokenizer, load_tokenizer, training_only)
    assert tokenizer.get_vocab() == build_word_tokenizer(evaluated).get_vocab()  # their words are all there
    assert tokenizer.get_vocab() != build_word_tokenizer(all_texts(base)).get_vocab()  # else: renumbered
    extra = run_tokenizer(tmp_path / "b", ["the ring"], build_word_tokenizer, load_tokenizer, ["Is it unique ?"])
    assert {"is", "it", "unique"} <= set(extra.get_vocab())


def test_recipe_json_records_paths_relative_to_the_checkout_or_the_home(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A committed checkpoint's recipe.json must name the same things on every machine: the embedded
    RGPT as adapters/rgpt/checkpoints/tiny, the cached suite as ~/.cache/..., other paths as given."""
    import json

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    recipe = SimpleNamespace(init_llm=str(REPOSITORY / "adapters" / "rgpt" / "checkpoints" / "tiny"),
                             init_tower=None, steps=3, mix=(("rec", 2),), words=("a/b", "/elsewhere/x"))
    write_recipe(tmp_path / "run", _as_recipe(recipe), home / ".cache" / "region-bench" / "suite", [], [],
                 polish_from=str(tmp_path / "stage2"))
    record = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert record["recipe"] == {"init_llm": "adapters/rgpt/checkpoints/tiny", "init_tower": None, "steps": 3,
                                "mix": [["rec", 2]], "words": ["a/b", "/elsewhere/x"]}
    assert record["data_root"] == "~/.cache/region-bench/suite"
    assert record["polish_from"] == str(tmp_path / "stage2")  # outside both: unchanged
    assert portable_paths({"k": [str(REPOSITORY)]}) == {"k": ["."]}


def _as_recipe(values: SimpleNamespace) -> object:
    """A dataclass instance with ``values``' fields, as write_recipe expects a Recipe."""
    cls = dataclasses.make_dataclass("Recipe", list(vars(values)))
    return cls(**vars(values))
