"""Caption metrics: identical to pycocoevalcap's classic pipeline, plus the edge cases it gets wrong.

Each METEOR JVM spends ~15-20 s loading its paraphrase table, so the Java tests
share one session (``shared_meteor``, passed as ``caption_metrics(meteor=...)``)
that loads while pycocoevalcap's own Meteor loads for the comparison: two JVMs in
all. The default path (one JVM per call) runs in the Java-error subprocess test.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.metrics.captions import METRIC_KEYS, caption_metrics, tokenize
from bench.metrics.meteor import MeteorError, MeteorScorer, score_line

REPO = Path(__file__).resolve().parent.parent
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java is not on PATH")

# Region captions in the style of RefCOCOg / Visual Genome, 1-3 references each.
CANDIDATES = {
    "r01": "a small red circle left of the blue square",
    "r02": "The man in the white shirt.",
    "r03": "a black dog lying on the grass",
    "r04": "woman holding an umbrella",
    "r05": "the blue square at the top right",
    "r06": "a green car parked near the curb",
    "r07": "the tallest tree on the left",
    "r08": "a white plate with a sandwich",
    "r09": "boy in red jacket",
    "r10": "the yellow triangle below the circle",
    "r11": "a cup of coffee on the table",
    "r12": "two zebras standing together",
    "r13": "the left most chair",
    "r14": "a stop sign on a pole",
    "r15": "person riding a bike",
    "r16": "a brown horse",
    "r17": "the large window behind the couch",
    "r18": "a red circle",
    "r19": "giraffe eating leaves from a tree",
    "r20": "the laptop on the desk",
}
REFERENCES = {
    "r01": ["a small red circle to the left of the blue square", "red circle next to a blue square"],
    "r02": ["man wearing a white shirt", "the guy in white", "a man with a white t-shirt"],
    "r03": ["black dog laying in the grass"],
    "r04": ["a woman with an umbrella", "lady holding a pink umbrella"],
    "r05": ["blue square in the upper right corner", "the top right blue square"],
    "r06": ["green car by the sidewalk", "a parked green car", "the car that is green"],
    "r07": ["tall tree on the left side"],
    "r08": ["a sandwich on a white plate", "white plate holding food"],
    "r09": ["a boy wearing a red jacket", "kid in a red coat"],
    "r10": ["yellow triangle under the red circle"],
    "r11": ["a coffee mug on a wooden table", "cup on the table", "white coffee cup"],
    "r12": ["two zebras next to each other"],
    "r13": ["chair on the far left", "leftmost chair"],
    "r14": ["red stop sign", "a stop sign on a metal pole"],
    "r15": ["a person on a bicycle", "man riding a bike", "cyclist on the road"],
    "r16": ["brown horse standing in a field"],
    "r17": ["big window behind the sofa", "the window in the back"],
    "r18": ["the red circle", "a small red circle"],
    "r19": ["a giraffe eating from a tree", "giraffe feeding on leaves"],
    "r20": ["laptop computer on a desk"],
}
IDENTICAL = "a small red circle left of the blue square"


def classic_scores(candidates: dict[str, str], references: dict[str, list[str]], meteor: object) -> dict[str, float]:
    """pycocoevalcap the way COCOEvalCap uses it: tokenize each side, then compute_score per scorer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": c}] for i, c in candidates.items()})
    return {
        "meteor": meteor.compute_score(gts, res)[0],  # type: ignore[attr-defined]
        "cider": Cider().compute_score(gts, res)[0],
        "bleu4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        "rouge_l": Rouge().compute_score(gts, res)[0],
    }


@pytest.fixture(scope="module")
def shared_meteor() -> Iterator[MeteorScorer]:
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH")
    with MeteorScorer() as meteor:
        yield meteor


@pytest.fixture(scope="module")
def realistic(shared_meteor: MeteorScorer) -> tuple[dict[str, float], dict[str, float]]:
    """(classic pycocoevalcap, ours) on the realistic set; both JVMs load their paraphrase tables at once."""
    from pycocoevalcap.meteor.meteor import Meteor

    classic_meteor = Meteor()  # its JVM starts loading now, alongside the shared one
    ours = caption_metrics(CANDIDATES, REFERENCES, meteor=shared_meteor)
    return classic_scores(CANDIDATES, REFERENCES, classic_meteor), ours


# -- equality with pycocoevalcap ---------------------------------------------------------


@needs_java
def test_each_metric_equals_pycocoevalcap(realistic: tuple[dict[str, float], dict[str, float]]) -> None:
    classic, ours = realistic
    assert tuple(ours) == METRIC_KEYS
    assert ours["meteor"] == classic["meteor"]  # the very same float
    for key in ("cider", "bleu4", "rouge_l"):
        assert ours[key] == pytest.approx(classic[key], abs=1e-9), key
    assert 0.2 < ours["meteor"] < 0.6 and ours["cider"] > 1.0  # realistic, and CIDEr is not capped at 1


@needs_java
def test_repeated_calls_on_one_jvm_give_the_same_numbers(
    realistic: tuple[dict[str, float], dict[str, float]], shared_meteor: MeteorScorer
) -> None:
    _, ours = realistic
    caption_metrics({"x": IDENTICAL}, {"x": ["something else entirely"]}, meteor=shared_meteor)
    assert caption_metrics(CANDIDATES, REFERENCES, meteor=shared_meteor) == ours  # no state leaks between calls


# -- hand-checkable values ---------------------------------------------------------------


@needs_java
def test_identical_pair(shared_meteor: MeteorScorer) -> None:
    scores = caption_metrics({"x": IDENTICAL}, {"x": [IDENTICAL]}, meteor=shared_meteor)
    # METEOR 1.5 drops the fragmentation penalty for an exact match: exactly 1, not 1 - 0.5 * (1/9)^3.
    assert scores["meteor"] == 1.0
    # pycocoevalcap's BLEU smooths with (matches + 1e-15) / (total + 1e-9): 1 to ~1e-10.
    assert scores["bleu4"] == pytest.approx(1.0, abs=1e-9)
    assert scores["rouge_l"] == 1.0
    # One-item split: every n-gram occurs in 1 of 1 documents, idf = log(1/1) = 0.
    assert scores["cider"] == 0.0


@needs_java
def test_bleu4_of_a_three_word_exact_match_is_not_one(shared_meteor: MeteorScorer) -> None:
    """No 4-grams: the smoothed 4-gram precision is 1e-15 / 1e-9, so BLEU-4 = (1e-6) ** (1/4)."""
    scores = caption_metrics({"x": "a red circle"}, {"x": ["a red circle"]}, meteor=shared_meteor)
    assert scores["meteor"] == 1.0 and scores["rouge_l"] == 1.0
    assert scores["bleu4"] == pytest.approx(1e-6**0.25, rel=1e-6)


@needs_java
def test_cider_depends_on_the_whole_split(shared_meteor: MeteorScorer) -> None:
    from pycocoevalcap.cider.cider import Cider

    def per_item_cider(ids: list[str]) -> dict[str, float]:
        cands, refs = tokenize(ids, CANDIDATES, REFERENCES)
        _, scores = Cider().compute_score({i: refs[i] for i in ids}, {i: [cands[i]] for i in ids})
        return dict(zip(ids, scores, strict=True))

    alone = per_item_cider(["r01"])["r01"]
    in_split = per_item_cider(list(CANDIDATES))["r01"]
    assert alone == 0.0 and in_split > 1.0  # same candidate and references, different score

    whole = caption_metrics(CANDIDATES, REFERENCES, meteor=shared_meteor)["cider"]
    halves = [
        caption_metrics({i: CANDIDATES[i] for i in part}, REFERENCES, meteor=shared_meteor)["cider"]
        for part in (list(CANDIDATES)[:10], list(CANDIDATES)[10:])
    ]
    assert abs(sum(halves) / 2 - whole) > 0.01  # averaging per-batch CIDEr is not the split's CIDEr


# -- inputs that break the classic tools --------------------------------------------------


def test_score_line_cleans_protocol_fields() -> None:
    assert score_line("x ||| y\n", ["a\nb ||| c", "  d\r\ne  "]) == "SCORE ||| a b c ||| d e ||| x y"
    assert score_line("", ["a cat"]) == "SCORE ||| a cat ||| "  # pycocoevalcap sends the same for ""


@needs_java
def test_line_breaks_and_separators_do_not_break_scoring(shared_meteor: MeteorScorer) -> None:
    messy_candidates = {
        "a": "a red\ncircle ||| left",
        "b": "the blue\rsquare",  # Java also splits lines on \r: pycocoevalcap would shift every later id
        "c": "a dog\u2028on grass",
        "d": "two zebras",
    }
    messy_references = {
        "a": ["a red circle|||on the left", "red\ncircle"],
        "b": ["blue\x0bsquare"],
        "c": ["a dog on the grass"],
        "d": ["two zebras standing"],
    }
    messy = caption_metrics(messy_candidates, messy_references, meteor=shared_meteor)
    # Same text with every line break a space (pycocoevalcap's own treatment of "\n"). The PTB
    # tokenizer turns "|||" into the tokens "| | |" on both sides, so those stay in.
    spaced = {i: " ".join(c.splitlines()) for i, c in messy_candidates.items()}
    spaced_refs = {i: [" ".join(r.splitlines()) for r in refs] for i, refs in messy_references.items()}
    assert messy == caption_metrics(spaced, spaced_refs, meteor=shared_meteor)
    assert all(math.isfinite(v) for v in messy.values()) and messy["meteor"] > 0.3
    cands, refs = tokenize(list(messy_candidates), messy_candidates, messy_references)
    assert cands == {"a": "a red circle | | | left", "b": "the blue square", "c": "a dog on grass", "d": "two zebras"}
    assert refs["a"] == ["a red circle | | | on the left", "red circle"] and refs["b"] == ["blue square"]


@needs_java
def test_meteor_wrapper_strips_the_separator(shared_meteor: MeteorScorer) -> None:
    """Raw "|||" would make METEOR read "a red" as a reference and "circle" as the hypothesis."""
    result = shared_meteor.score(["a red ||| circle\n"], [["a red circle"]])
    assert result.segments == [1.0] and result.corpus == 1.0


@needs_java
def test_empty_candidates_score_zero(shared_meteor: MeteorScorer) -> None:
    # "." becomes "" too: the PTB step drops punctuation.
    scores = caption_metrics({"e": "", "p": "."}, {"e": ["a cat"], "p": ["a dog on a mat"]}, meteor=shared_meteor)
    assert scores["meteor"] == 0.0 and scores["cider"] == 0.0 and scores["rouge_l"] == 0.0
    assert scores["bleu4"] < 1e-9
    segments = shared_meteor.score(["", "a red circle"], [["a red circle"], ["a red circle"]]).segments
    assert segments == [0.0, 1.0]


# -- failures ------------------------------------------------------------------------------


def test_missing_references_name_the_id() -> None:
    with pytest.raises(ValueError, match="'r02'"):
        caption_metrics({"r01": "a", "r02": "b"}, {"r01": ["a"]})
    with pytest.raises(ValueError, match="'r01'"):
        caption_metrics({"r01": "a"}, {"r01": []})
    with pytest.raises(TypeError, match="'r01'"):
        caption_metrics({"r01": "a"}, {"r01": "a"})  # a bare string would be scored char by char
    with pytest.raises(ValueError, match="no candidates"):
        caption_metrics({}, {"r01": ["a"]})


@needs_java
def test_java_error_is_raised_with_its_text_and_the_process_exits(tmp_path: Path) -> None:
    """Run in a subprocess: with pycocoevalcap's Meteor this case leaves a held lock and hangs at exit."""
    not_a_jar = tmp_path / "meteor-1.5.jar"
    not_a_jar.write_text("this is not a jar\n")
    script = textwrap.dedent(
        f"""
        import threading
        from pathlib import Path
        import bench.metrics.meteor as meteor
        from bench.metrics.captions import caption_metrics

        meteor.locate_meteor_jar = lambda: Path({str(not_a_jar)!r})
        try:
            caption_metrics({{"a": "a red circle"}}, {{"a": ["a red circle"]}})
        except RuntimeError as error:
            print("RAISED", type(error).__name__, error)
        print("THREADS", threading.active_count())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "RAISED MeteorError" in done.stdout
    assert "Invalid or corrupt jarfile" in done.stdout  # Java's own words, from its stderr
    assert "THREADS 1" in done.stdout


def fake_java(tmp_path: Path, body: str) -> str:
    """A stand-in `java` (a Python script, so it needs no Java and no coreutils on PATH)."""
    script = tmp_path / "java"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_unparseable_answer_raises_with_java_output(tmp_path: Path) -> None:
    java = fake_java(
        tmp_path,
        "sys.stdin.readline()\nprint('oops', file=sys.stderr, flush=True)\n"
        "print('Error: specify SCORE or EVAL or SING', flush=True)\ntime.sleep(60)",
    )
    with (
        pytest.raises(MeteorError, match="(?s)unexpected answer to SCORE: 'Error: specify SCORE.*Java stderr:\noops"),
        MeteorScorer(java=java) as meteor,
    ):
        meteor.score(["a"], [["a"]])


def test_silent_jvm_times_out_and_is_killed(tmp_path: Path) -> None:
    scorer = MeteorScorer(java=fake_java(tmp_path, "time.sleep(60)"), timeout_s=0.5)
    with pytest.raises(MeteorError, match="no answer from METEOR for 0.5 s"), scorer:
        scorer.score(["a"], [["a"]])
    assert not scorer.running


def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MeteorError, match="cannot start METEOR"), MeteorScorer(java=str(tmp_path / "no-java")):
        pass


@needs_java
def test_default_session_is_one_jvm_per_process() -> None:
    """Caption tasks in one run share one METEOR JVM (its paraphrase table loads once)."""
    from bench.metrics.meteor import shared_scorer

    assert shared_scorer() is shared_scorer()
    first = caption_metrics({"a": "a red circle", "b": "a blue square"}, {"a": ["a red circle"], "b": ["a square"]})
    process = shared_scorer()._process
    assert process is not None and process.poll() is None
    second = caption_metrics({"a": "a red circle", "b": "a blue square"}, {"a": ["a red circle"], "b": ["a square"]})
    assert shared_scorer()._process is process and second == first
