"""What every tiny-model training run writes and reuses, whatever the model.

* ``recipe.json``: the recipe, the data root, conversation counts per kind, and the
  seconds of the last call (:func:`write_recipe`, :func:`record_seconds`).
* ``tokenizer.json``: the run's word-level tokenizer, fixed at its first call
  (:func:`run_tokenizer`).
* ``vision/tower.safetensors``: the stage-0 tower (:func:`stage0_tower`). A re-run with
  the same ``out_dir`` loads it instead of training it again, which is what makes a
  resumed run cheap (stage 0 is about half of a tiny run).
* ``language/llm.safetensors`` and ``language/heads.safetensors``: the LLM and the auxiliary
  heads after stage L (:func:`stage_language`), reused the same way (``language/`` also holds
  that stage's own resume checkpoint and log).

And the stage plan both papers share (:func:`paper_stages`, :func:`example_sets`,
:func:`parse_curriculum`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from bench.errors import ConfigError, DataError
from bench.training.conversations import KINDS, kind_counts, longest_phrasings, mix
from bench.training.trainer import Stage, train
from bench.training.vision import VisionExample, VisionRecipe, pretrain_vision_tower

# Recipe.polish_captions: which sentences of each RefCOCOg ref the polish stage trains on.
POLISH_CAPTIONS: tuple[str, ...] = ("all", "longest")
RECIPE_FILE = "recipe.json"
# The checkout root: recipe.json records paths inside it relative to it (portable_path).
REPOSITORY = Path(__file__).resolve().parents[2]
VISION_DIR = "vision"
TOWER_FILE = "tower.safetensors"
LANGUAGE_DIR = "language"
LLM_FILE = "llm.safetensors"
HEADS_FILE = "heads.safetensors"
POLISH_DIR = "polish"


def paper_stages(recipe: Any, connector: tuple[str, ...], llm: tuple[str, ...]) -> list[Stage]:
    """Both papers' two stages: (1) the vision-to-language parts (``connector`` prefixes) alone;
    (2) those and the LLM (``llm`` prefixes). The vision tower is never trained here.

    Stage 2 opens with ``recipe.curriculum``: ``(kind, steps)`` phases, each on one conversation
    kind alone or on a union of kinds such as ``classification+pope`` (stages ``stage2-<kind>``,
    example set ``kind``), then the full mix (``"all"``).
    Why: a tiny LLM starts from random weights, not from Vicuna. On the full mix it learns every
    answer format from the text alone and never starts reading the vision tokens (measured on the
    tiny RGPT: chance on every task after 2400 steps). A task that cannot be answered from the
    text, trained alone, forces the attention onto the vision tokens: region classification
    alone reaches 89% val accuracy in 1500 steps, and the full mix then keeps it (89% after 4000
    more steps). One phase per matching skill (POPE, then REC, 1000 steps each) was measured
    too and is not the default: POPE alone rose only to 59% accuracy, REC alone stayed at chance,
    and each phase erased the previous one (classification fell to 0%).
    """
    def warmup(steps: int) -> int:
        return min(recipe.warmup_steps, steps // 2)

    both = connector + llm
    out = [Stage("stage1", connector, recipe.stage1_steps, recipe.stage1_lr, recipe.batch_size,
                 warmup_steps=warmup(recipe.stage1_steps))]
    for kind, steps in recipe.curriculum:
        if steps:
            out.append(Stage(f"stage2-{kind}", both, steps, recipe.stage2_lr, recipe.batch_size,
                             warmup_steps=warmup(steps), weight_decay=0.01, data=kind))
    out.append(Stage("stage2", both, recipe.stage2_steps, recipe.stage2_lr, recipe.batch_size,
                     warmup_steps=warmup(recipe.stage2_steps), weight_decay=0.01))
    return out


def parse_curriculum(text: str) -> tuple[tuple[str, int], ...]:
    """``"classification=1000,classification+pope=500"`` -> ``(("classification", 1000),
    ("classification+pope", 500))``: a phase trains on one kind, or on the union of kinds joined
    by ``+``; ``""`` or ``"none"``: no curriculum (stage 2 is the full mix only)."""
    if text.strip().lower() in ("", "none"):
        return ()
    phases = []
    for part in text.split(","):
        name, sep, steps = part.strip().partition("=")
        kinds = [k.strip() for k in name.split("+")]
        if not sep or not all(k in KINDS for k in kinds) or len(set(kinds)) != len(kinds) \
                or not steps.strip().isdigit():
            raise ValueError(f"curriculum phase {part.strip()!r}: write KIND=STEPS or KIND+KIND=STEPS with each "
                             f"KIND one of {', '.join(KINDS)} (e.g. classification=1000,classification+pope=500)")
        name = "+".join(kinds)
        if name in (k for k, _ in phases):
            raise ValueError(f"curriculum phase {part.strip()!r}: {name} already has a phase; "
                             "give each kind once (KIND=STEPS)")
        phases.append((name, int(steps)))
    return tuple(phases)


def parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    """``"caption:refcocog=20000,rec=8000"`` -> ``(("caption:refcocog", 20000), ("rec", 8000))``: a
    re-weighted mix for :func:`bench.training.conversations.mix`, each key a kind or ``kind:dataset``
    (the prefix of a conversation's source: ``caption:refcocog``, ``caption:vg``)."""
    entries: list[tuple[str, int]] = []
    for part in text.split(","):
        key, sep, count = (p.strip() for p in part.partition("="))
        if not sep or key.partition(":")[0] not in KINDS or not count.isdigit():
            raise ValueError(f"mix entry {part.strip()!r}: write KIND=COUNT or KIND:DATASET=COUNT with each KIND one "
                             f"of {', '.join(KINDS)} (e.g. caption:refcocog=20000,rec=8000,uniqueness=8000)")
        if key in (k for k, _ in entries):
            raise ValueError(f"mix entry {part.strip()!r}: {key} is already in the mix; give each key once")
        entries.append((key, int(count)))
    return tuple(entries)


def example_sets(conversations: Sequence[Any], examples: Sequence[Any],
                 phases: Sequence[str] = ()) -> dict[str, Sequence[Any]]:
    """What :func:`paper_stages` draws from: ``"all"`` (the re-weighted mix), every conversation of
    each kind (not only the mix's share: a curriculum phase sees each about once), and for each
    union phase in ``phases`` (``"classification+pope"``) every conversation of its kinds.

    A phase with no conversation to train on is a :class:`~bench.errors.DataError` that says
    which kind is missing (a data root without RefCOCOg has no ``rec``).
    """
    sets: dict[str, Sequence[Any]] = {"all": examples}
    for kind in KINDS:
        sets[kind] = [c for c in conversations if c.kind == kind]
    for name in phases:
        if name not in sets:
            sets[name] = [c for kind in name.split("+") for c in sets[kind]]
        if not sets[name]:
            raise DataError(f"curriculum phase {name!r}: the training data has no {name} conversations; "
                            "leave that phase out of --curriculum (or add the data it needs)")
    return sets


def drawn_beyond_mix(sets: Mapping[str, Sequence[Any]], stages: Sequence[Stage]) -> list[Any]:
    """The conversations ``stages`` draw from sets other than ``"all"`` (curriculum phases),
    for :func:`language_then_alignment`'s ``later``."""
    names = dict.fromkeys(stage.data for stage in stages if stage.data != "all")
    return [c for name in names for c in sets[name]]


def run_tokenizer(out_dir: Path, texts: Sequence[str], build: Callable[[Sequence[str]], Any],
                  load: Callable[[Path], Any], extra_texts: Sequence[str] = ()) -> Any:
    """The run's word-level tokenizer: ``build(texts)`` at the run's first call, saved at once in
    ``out_dir`` (``tokenizer.json``, where the finished checkpoint keeps it too); a later call
    ``load``-s it. Why: a word-level tokenizer numbers its words by frequency, so training
    conversations that changed between two calls (a new kind, another data root) would renumber
    the words, and the embeddings of a resumed or reused stage would silently stand for other words.
    A word of ``texts`` the saved tokenizer lacks is a :class:`~bench.errors.DataError` (the
    checkpoint's vocabulary cannot grow).

    ``extra_texts`` (conversations of kinds no evaluation asks, such as ``uniqueness``) do not
    count toward the word order: their words join the vocabulary only when ``texts`` lack them, so
    adding such a kind leaves the tokenizer of a data root that already has its words unchanged
    (and runs on it reproducible)."""
    if (out_dir / "tokenizer.json").is_file():
        tokenizer = load(out_dir)
        new = sorted(set(build([*texts, *extra_texts]).get_vocab()) - set(tokenizer.get_vocab()))
        if new:
            raise DataError(f"{out_dir / 'tokenizer.json'}: the training conversations have {len(new)} words this "
                            f"run's tokenizer lacks ({', '.join(new[:8])}{', ...' if len(new) > 8 else ''}); "
                            "train into a new --out, or on the data this run started with")
        return tokenizer
    tokenizer = build(texts)
    missing = sorted(set(build(extra_texts).get_vocab()) - set(tokenizer.get_vocab())) if extra_texts else []
    if missing:
        tokenizer = build([*texts, " ".join(missing)])
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def write_recipe(out_dir: Path, recipe: Any, data_root: Path, conversations: Sequence[Any],
                 examples: Sequence[Any], polish_from: str | None = None) -> None:
    """``recipe.json``: every setting, the data, and what the conversations were (and the
    checkpoint a polish-only run started from)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"recipe": portable_paths(dataclasses.asdict(recipe)), "data_root": portable_path(str(data_root)),
              "conversations": kind_counts(conversations), "examples": kind_counts(examples)}
    if polish_from is not None:
        record["polish_from"] = portable_path(polish_from)
    (out_dir / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def portable_path(value: str) -> str:
    """A path as ``recipe.json`` records it: inside the repository, relative to its root
    (``adapters/rgpt/checkpoints/tiny``); inside the home directory, ``~/...``; else unchanged.
    A committed checkpoint's recipe then names the same things on every machine and does not
    disclose where it was trained. Strings that are not absolute paths are returned as they are."""
    path = Path(value)
    if not path.is_absolute():
        return value
    for root, shown in ((REPOSITORY, None), (Path.home(), "~")):
        try:
            relative = path.relative_to(root)
        except ValueError:
            continue
        return relative.as_posix() if shown is None else f"{shown}/{relative.as_posix()}"
    return value


def portable_paths(record: Any) -> Any:
    """:func:`portable_path` applied to every string of a JSON-like record (dicts, lists, tuples)."""
    if isinstance(record, str):
        return portable_path(record)
    if isinstance(record, Mapping):
        return {key: portable_paths(value) for key, value in record.items()}
    if isinstance(record, (list, tuple)):
        return [portable_paths(value) for value in record]
    return record


def record_seconds(out_dir: Path, started: float) -> None:
    """Add the wall-clock seconds of this call to ``recipe.json``."""
    path = out_dir / RECIPE_FILE
    data = json.loads(path.read_text())
    data["seconds_last_call"] = round(time.time() - started, 1)
    path.write_text(json.dumps(data, indent=2) + "\n")


def stage0_tower(tower: nn.Module, out_dir: Path, initialise: Callable[[], None],
                 build_examples: Callable[[], tuple[list[VisionExample], list[str]]], select_layer: int,
                 recipe: VisionRecipe, progress: bool = True, subdir: str = VISION_DIR) -> None:
    """Load ``out_dir/vision/tower.safetensors`` if a previous call wrote it; else ``initialise()``,
    pre-train on ``build_examples()`` for ``recipe.steps`` steps (none: keep the initial tower) and
    save. Either way the tower ends frozen, in eval mode, as CLIP is in the papers. ``subdir``: the
    folder under ``out_dir`` (``vision/start`` holds the low-resolution phase of RGPT's stage 0)."""
    from safetensors.torch import load_file, save_file

    vision_dir = out_dir / subdir
    tower_file = vision_dir / TOWER_FILE
    if tower_file.is_file():
        tower.load_state_dict(load_file(str(tower_file)))
    else:
        vision_dir.mkdir(parents=True, exist_ok=True)
        initialise()
        if recipe.steps:
            examples, names = build_examples()
            pretrain_vision_tower(tower, examples, len(names), select_layer, recipe, progress=progress,
                                  log_path=vision_dir / "log.json")
            del examples
        save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(tower_file))
    tower.requires_grad_(False)
    tower.eval()


def language_then_alignment(model: nn.Module, processor: Any, examples: Sequence[Any], data_root: Path,
                            out_dir: Path, recipe: Any, make_collate: Callable[[], Any], grid: int,
                            llm_prefixes: Sequence[str] = ("llm.",), square: bool = True,
                            progress: bool = True, later: Sequence[Any] = (),
                            borrowed_heads: Callable[[nn.Module], None] | None = None) -> tuple[nn.Module, Any, str]:
    """Stage L when ``recipe`` has steps for it (:func:`stage_language`), then what stages 1 and
    2 train: ``model`` with ``make_collate()``, or after stage L and with a non-zero weight for
    any of the alignment terms, the :class:`bench.training.alignment.AlignedLM` around it with its collate. Returns
    (module, collate, the prefix of the model's parameter names in the module).

    ``recipe``: a tiny model's recipe (``language_easy_steps``, ``language_steps``,
    ``language_cycles``, ``language_lr``, ``language_word_weight``, ``language_box_marker``,
    ``language_cell_detail``, ``language_description_weight``,
    ``align_weight``, ``vision_aux_weight``,
    ``contrast_weight``, ``contrast_temperature``, ``image_align_share``,
    ``batch_size``, ``seed``); ``grid``: the image-token grid's side; ``square``: whether the
    model pads images to a square (RGPT) or stretches them (GPT4RoI); ``llm_prefixes``: the
    LLM's parameter names in ``model``. The training images' objects are read and verbalized
    once, for both stage L and the alignment. ``later``: conversations that later stages draw
    beyond ``examples`` (curriculum phases); stage L does not train on them, but
    the alignment needs their words too. ``borrowed_heads``: with no stage L of its own, the
    alignment still runs when this fills the heads from another run's stage L (and ``model``'s
    LLM starts from that run's: :func:`borrow_heads_by_words`)."""
    from bench.training.alignment import verbal_training
    from bench.training.language import (
        AuxiliaryHeads,
        LanguageRecipe,
        pretrain_language,
        scene_objects,
        verbalize_all,
    )

    own_stage = bool(recipe.language_easy_steps or recipe.language_steps)
    aligned = bool(recipe.align_weight or recipe.vision_aux_weight or recipe.contrast_weight)
    if not own_stage and not (borrowed_heads is not None and aligned):
        return model, make_collate(), ""
    heads = AuxiliaryHeads(model.llm.config.hidden_size,
                           vocab_size=model.llm.config.vocab_size if recipe.language_word_weight else None,
                           descriptions=bool(recipe.language_description_weight))
    # the region placeholder's own token (its embedding row is never an input otherwise)
    marker = processor.tokenizer.convert_ids_to_tokens(model.config.region_token_id) \
        if recipe.language_box_marker else None
    verbals = verbalize_all([*examples, *later], scene_objects(data_root, "train"), grid, square, marker,
                            recipe.language_cell_detail)
    language = LanguageRecipe(steps=recipe.language_steps, easy_steps=recipe.language_easy_steps,
                              cycles=recipe.language_cycles, lr=recipe.language_lr, batch_size=recipe.batch_size,
                              seed=recipe.seed, word_weight=recipe.language_word_weight,
                              description_weight=recipe.language_description_weight)
    if own_stage:
        stage_language(model.llm, heads, out_dir, lambda directory: pretrain_language(
            model, heads, processor, examples, verbals, grid, directory, language, progress=progress,
            llm_prefixes=llm_prefixes))
    elif borrowed_heads is not None:
        borrowed_heads(heads)
    if not aligned:
        return model, make_collate(), ""
    wrapped, collate = verbal_training(model, heads, make_collate(), processor, verbals, grid * grid,
                                       recipe.align_weight, recipe.vision_aux_weight,
                                       recipe.contrast_weight, recipe.contrast_temperature, recipe.image_align_share)
    return wrapped, collate, "model."


def stage_language(llm: nn.Module, heads: nn.Module, out_dir: Path, pretrain: Callable[[Path], Any]) -> None:
    """Load ``out_dir/language/{llm,heads}.safetensors`` into ``llm`` and ``heads`` if a previous
    call wrote them; else ``pretrain(out_dir / "language")`` (stage L,
    :func:`bench.training.language.pretrain_language`, which trains both in place and is itself
    resumable there) and save them."""
    from safetensors.torch import load_file, load_model, save_model

    language_dir = out_dir / LANGUAGE_DIR
    llm_file, heads_file = language_dir / LLM_FILE, language_dir / HEADS_FILE
    if llm_file.is_file():
        if not heads_file.is_file():
            raise DataError(f"{language_dir}: {LLM_FILE} without {HEADS_FILE} (written before the heads were "
                            f"kept); delete {language_dir} to run stage L again")
        saved = load_file(str(heads_file))
        saved_heads = {key.split(".")[0] for key in saved}
        wanted = {key.split(".")[0] for key in heads.state_dict()}
        if saved_heads != wanted:
            raise DataError(f"{heads_file} holds the heads {sorted(saved_heads)}, this recipe needs "
                            f"{sorted(wanted)} (the word head comes with --language-word-weight > 0, the "
                            f"description head with --language-description-weight > 0); delete {language_dir} "
                            "to run stage L again, or match those options to that run")
        load_model(llm, str(llm_file))
        heads.load_state_dict(saved)
        return
    language_dir.mkdir(parents=True, exist_ok=True)
    pretrain(language_dir)
    save_model(llm, str(llm_file))
    save_model(heads, str(heads_file))


def polish_stage(recipe: Any, trained: tuple[str, ...]) -> Stage:
    """The closing polish stage (``recipe.polish_steps``): the ``trained`` parameter prefixes (what
    stage 2 trains), on the bare model, at ``recipe.polish_lr``, drawing from the example set
    ``polish`` (``recipe.polish_mix``; :func:`polish` builds it)."""
    return Stage("polish", trained, recipe.polish_steps, recipe.polish_lr, recipe.batch_size,
                 warmup_steps=min(recipe.warmup_steps, recipe.polish_steps // 2), weight_decay=0.01, data="polish")


def polish(model: nn.Module, conversations: Sequence[Any], recipe: Any, collate: Any, trained: tuple[str, ...],
           out_dir: Path, save_model: Callable[[nn.Module, Path], None], progress: bool = True) -> None:
    """Run the polish stage on ``model`` into ``out_dir/polish/`` (its own log and resume), so a polish
    stage added to a finished run trains on from its final weights, stages 1 and 2 untouched.
    Its data: ``recipe.polish_mix`` drawn from ``conversations``, RefCOCOg's captions cut to each
    ref's longest sentence when ``recipe.polish_captions`` is ``"longest"``
    (:func:`bench.training.conversations.longest_phrasings` says why)."""
    pool = longest_phrasings(conversations) if recipe.polish_captions == "longest" else list(conversations)
    examples = {"polish": mix(pool, dict(recipe.polish_mix), seed=recipe.seed)}
    train(model, examples, collate, [polish_stage(recipe, trained)], out_dir / POLISH_DIR, seed=recipe.seed,
          save_model=save_model, progress=progress)


def checkpoint_to_polish(checkpoint: Path, out_dir: Path, recipe: Any, model_class: Any,
                         load_tokenizer: Callable[[Path], Any], model_name: str) -> tuple[Any, Any]:
    """The tiny checkpoint ``checkpoint`` (``--polish-from``) as ``model_class``, its tower frozen, and
    its tokenizer, which becomes the run's (copied into ``out_dir``; a run already holding another is
    refused). Why: a polish stage alone on a finished stage 2 costs minutes, where a whole run costs hours,
    and gives what the run with that polish stage gives (same data, seed and batches)."""
    if not recipe.polish_steps:
        raise ConfigError(f"polish from {checkpoint}: give the polish stage steps (--polish-steps N)")
    files = [checkpoint / name for name in ("config.json", "model.safetensors", "tokenizer.json")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"polish from {checkpoint}: no {', '.join(missing)} there (a tiny {model_name} "
                          f"checkpoint directory, as bench train {model_name.lower()} writes it)")
    if json.loads(files[0].read_text()).get("size") != "tiny":
        raise ConfigError(f"polish from {checkpoint}: not a tiny {model_name} checkpoint (config.json's size)")
    tokenizer = load_tokenizer(checkpoint)
    if (out_dir / "tokenizer.json").is_file():
        if load_tokenizer(out_dir).get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"{out_dir} holds another run's tokenizer than {checkpoint}'s; polish into a new --out")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    model = model_class.from_pretrained(checkpoint)
    model.vision_tower.requires_grad_(False)
    model.vision_tower.eval()
    return model, tokenizer


def init_llm_by_words(llm: nn.Module, weights: Path, tokenizer: Any, source_tokenizer: Any) -> int:
    """Start ``llm`` (a LLaMA: ``model.*``, ``lm_head``) from another tiny LLM's ``weights`` whose
    vocabulary is ``source_tokenizer``'s: every transformer weight as is, and the rows of
    ``embed_tokens`` and ``lm_head`` of each token both vocabularies hold (matched by its text);
    the other rows keep their initialisation. Returns how many rows were matched.

    Why: both papers start their LLM from Vicuna, and a tiny model has no Vicuna to load. The tiny
    GPT4RoI starts from the tiny RGPT's stand-in for it (the LLM after RGPT's text-only stage L),
    with its own tokenizer, as its tower starts from the tiny RGPT's stand-in for CLIP."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(weights))
    own = llm.state_dict()
    mismatched = sorted(k for k, v in state.items() if k in own and k not in _VOCAB_ROWS and v.shape != own[k].shape)
    unknown = sorted(set(state) - set(own))
    if mismatched or unknown:
        raise ValueError(f"{weights}: not the same LLaMA shape as the model being trained "
                         f"(shape differs: {mismatched[:3]}, unknown: {unknown[:3]})")
    targets, sources = matched_rows(tokenizer, source_tokenizer)
    with torch.no_grad():
        for key, value in state.items():
            if key in _VOCAB_ROWS:
                own[key][targets] = value[sources].to(own[key].dtype)
            else:
                own[key].copy_(value)
    return len(targets)


_VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")


def matched_rows(tokenizer: Any, source_tokenizer: Any) -> tuple[Any, Any]:
    """The rows of the tokens both vocabularies hold, matched by token text: (rows in ``tokenizer``'s
    vocabulary, the same tokens' rows in ``source_tokenizer``'s), two long tensors."""
    import torch

    source = source_tokenizer.get_vocab()
    pairs = [(row, source[token]) for token, row in tokenizer.get_vocab().items() if token in source]
    return (torch.tensor([row for row, _ in pairs], dtype=torch.long),
            torch.tensor([row for _, row in pairs], dtype=torch.long))


def borrow_heads_by_words(heads: nn.Module, weights: Path, tokenizer: Any, source_tokenizer: Any) -> int:
    """Fill stage L's :class:`~bench.training.language.AuxiliaryHeads` ``heads`` from another run's
    ``heads.safetensors`` (``weights``), whose vocabulary is ``source_tokenizer``'s: the match and
    index heads as they are, the word head's rows matched by token text as
    :func:`init_llm_by_words` matches the LLM's. A word the source never saw gets a zero row and
    the source's lowest bias (it is never a region's word in that run, so it must not win).
    Returns how many word rows were matched (0 without a word head).

    Why: the heads are probes on the LLM's hidden states, trained in that run's stage L with the
    LLM that :func:`init_llm_by_words` starts this model from; borrowing them lets stages 1 and 2
    of this model use the alignment terms (:mod:`bench.training.alignment`) without a stage L of
    its own (for the tiny GPT4RoI, five times the tiny RGPT's: 256 image tokens, not 16)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(weights))
    saved = {key.split(".")[0] for key in state}
    wanted = {key.split(".")[0] for key in heads.state_dict()}
    if saved != wanted:
        raise ConfigError(f"{weights} holds the heads {sorted(saved)}, this recipe needs {sorted(wanted)} (the "
                          "word head comes with --language-word-weight > 0, the description head with "
                          "--language-description-weight > 0); match those options to the run it comes from")
    own = heads.state_dict()
    bad = sorted(k for k, v in state.items() if not k.startswith("word_head.") and v.shape != own[k].shape)
    if bad or ("word_head.weight" in state and state["word_head.weight"].shape[1] != own["word_head.weight"].shape[1]):
        raise ConfigError(f"{weights}: heads of another hidden size than this model's LLM ({bad[:3]}); borrow "
                          "them from the run whose LLM starts this one (--init-llm)")
    if "word_head.weight" not in state:
        heads.load_state_dict(state)
        return 0
    targets, sources = matched_rows(tokenizer, source_tokenizer)
    with torch.no_grad():
        for key, value in state.items():
            if key == "word_head.weight":
                own[key].zero_()
                own[key][targets] = value[sources]
            elif key == "word_head.bias":
                own[key].fill_(value.min())
                own[key][targets] = value[sources]
            else:
                own[key].copy_(value)
    return len(targets)
