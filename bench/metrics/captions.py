"""Region captioning metrics (RefCOCOg, Visual Genome): METEOR, CIDEr, BLEU-4, ROUGE-L.

Numbers must match the COCO caption toolkit the papers used (pycocoevalcap 1.2),
so this module reuses its tokenizer and scorers and only changes plumbing:

* Tokenize once: one PTBTokenizer JVM over candidates and references together,
  and the same tokenized text goes to every scorer (pycocoevalcap's own
  ``COCOEvalCap`` tokenizes the two sides in separate JVM runs).
* METEOR goes through :mod:`bench.metrics.meteor` rather than pycocoevalcap's
  ``Meteor``, whose lock is never released when Java fails, which then hangs the
  interpreter at exit. Same jar, command and protocol, hence the same numbers.
* CIDEr (pycocoevalcap's ``Cider``, i.e. CIDEr-D) takes its document
  frequencies from the references of the split it is given, so it only means
  something over the whole split: never average per-batch CIDEr. A one-item
  split scores 0 because every n-gram then has idf log(1/1) = 0.

The METEOR JVM is started first, so it loads its paraphrase table (the slow
part, ~15-20 s) while the tokenizer runs and BLEU/CIDEr/ROUGE are computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench.metrics.meteor import MeteorScorer, shared_scorer

METRIC_KEYS = ("meteor", "cider", "bleu4", "rouge_l")


def caption_metrics(
    candidates: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    meteor: MeteorScorer | None = None,
) -> dict[str, float]:
    """METEOR, CIDEr (CIDEr-D as pycocoevalcap's Cider computes it), BLEU-4 and ROUGE-L over the WHOLE split.

    Keys exactly "meteor", "cider", "bleu4", "rouge_l"; values are fractions as
    pycocoevalcap returns them (CIDEr is not bounded by 1: 1.099 is the 109.9 of
    papers). The split is the candidates' ids; every one needs at least one
    reference (ValueError naming the id); references of other ids are ignored.
    Empty candidates are scored (as zero matches), not rejected.

    ``meteor``: the METEOR session to use; by default the process-wide one
    (:func:`~bench.metrics.meteor.shared_scorer`: one JVM per run).
    """
    ids = check_split(candidates, references)
    return _score_split(ids, candidates, references, meteor if meteor is not None else shared_scorer())


def check_split(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    """The ids to score, after checking types before any JVM is started.

    A bare string as references is rejected because iterating it would silently
    score against single characters.
    """
    if not candidates:
        raise ValueError("no candidates to score")
    for sample_id, caption in candidates.items():
        if not isinstance(caption, str):
            raise TypeError(f"candidate for id {sample_id!r} is {type(caption).__name__}, not str")
        refs = references.get(sample_id)
        if refs is None or len(refs) == 0:
            raise ValueError(f"no references for candidate id {sample_id!r}")
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references for id {sample_id!r} must be a sequence of str")
    return list(candidates)


def _score_split(
    ids: list[str],
    candidates: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    meteor: MeteorScorer,
) -> dict[str, float]:
    meteor.start()  # loads in the background from here on
    tokenized_candidates, tokenized_references = tokenize(ids, candidates, references)
    res = {i: [tokenized_candidates[i]] for i in ids}
    gts = {i: tokenized_references[i] for i in ids}
    scores = _ngram_metrics(gts, res)
    scores["meteor"] = meteor.score([res[i][0] for i in ids], [gts[i] for i in ids]).corpus
    return {key: float(scores[key]) for key in METRIC_KEYS}


def tokenize(
    ids: Sequence[str], candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """PTB-tokenize (lowercase, punctuation dropped) both sides in ONE Java run.

    Every line break is replaced by a space first: pycocoevalcap only replaces
    ``\\n``, but Java's line reader also splits on ``\\r``, ``\\v``, ``\\f``,
    U+2028/2029, which shifts every following caption onto the wrong id.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    batch: dict[tuple[str, str], list[dict[str, str]]] = {}
    for i in ids:
        batch[("candidate", i)] = [{"caption": _one_line(candidates[i])}]
        batch[("reference", i)] = [{"caption": _one_line(r)} for r in references[i]]
    try:
        tokenized = PTBTokenizer().tokenize(batch)
    except OSError as error:
        raise RuntimeError(
            f"PTB tokenizer could not run: {error} (it needs `java` on PATH and writes a temporary file "
            "next to pycocoevalcap's stanford-corenlp jar)"
        ) from error
    for key, captions in batch.items():
        if len(tokenized.get(key, ())) != len(captions):
            raise RuntimeError(
                "PTB tokenizer (Java) returned fewer lines than captions; its error, if any, is on stderr above"
            )
    return (
        {i: tokenized[("candidate", i)][0] for i in ids},
        {i: tokenized[("reference", i)] for i in ids},
    )


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _ngram_metrics(gts: dict[str, list[str]], res: dict[str, list[str]]) -> dict[str, float]:
    """BLEU-4, CIDEr-D and ROUGE-L exactly as pycocoevalcap computes them, on tokenized text."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge_l, _ = Rouge().compute_score(gts, res)
    return {"bleu4": bleu[3], "cider": cider, "rouge_l": rouge_l}
