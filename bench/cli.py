"""The ``bench`` command line (also ``python bench.py``).

Problems with the user's input surface as one ``error:`` line and exit code 2;
a run in which samples failed saves everything finished, lists the failures
and exits with 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from bench import registry
from bench.errors import BenchError

app = typer.Typer(
    name="bench",
    help="region-bench: evaluate region-level vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train reference models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
convert_app = typer.Typer(help="Convert released checkpoints into loadable weights.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(function: F) -> F:
    """Print a :class:`BenchError` as one sentence and exit 2, instead of a traceback."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BenchError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def run(
    model: Annotated[str, typer.Option("--model", "-m", help="Adapter name (see `bench list models`).")],
    task: Annotated[str, typer.Option("--task", "-t", help="Task or group names, comma separated.")],
    model_args: Annotated[Optional[str], typer.Option(help="Adapter arguments: k=v,k2=v2.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Score only the first N samples of each task.")] = None,
    batch_size: Annotated[int, typer.Option(help="Requests per adapter call.")] = 8,
    device: Annotated[str, typer.Option(help="Device for model adapters: cpu, cuda, cuda:1 ...")] = "cpu",
    data_root: Annotated[Optional[Path], typer.Option(
        help="Directory with the datasets (layout in README); default: the embedded synthetic suite.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where samples and results.json go.")] = Path(
        "outputs"),
    seed: Annotated[int, typer.Option(help="Seed for adapters that sample.")] = 0,
    split: Annotated[Optional[str], typer.Option(
        help="Dataset split for tasks that have several (e.g. test); default: each task's own.")] = None,
    task_args: Annotated[Optional[str], typer.Option(
        help="Task options: k=v,k2=v2 (e.g. max_candidates=20 for refcocog-rec).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run a model on tasks; print the scores and save them under --output."""
    from bench.evaluate import RunConfig, run_evaluation
    from bench.results import RESULTS_FILE, format_table

    config = RunConfig(
        model=model, tasks=task, model_args=registry.parse_model_args(model_args), data_root=data_root,
        output=output, limit=limit, batch_size=batch_size, device=device, seed=seed, split=split,
        task_args=registry.parse_model_args(task_args, "--task-args"), progress=progress,
    )
    if data_root is None:
        typer.echo("note: no --data-root given; using the embedded synthetic region suite", err=True)
    report = run_evaluation(config)
    results = report.results
    if results["results"]:
        typer.echo(format_table(results["results"], results["n_samples"], results["versions"]["tasks"]))
    if limit is not None:
        typer.echo(f"note: scores cover only the first {limit} samples of each task (--limit)")
    typer.echo(f"saved {output / RESULTS_FILE} and samples_<task>.jsonl files in {output}")
    if report.failed:
        for outcome in report.outcomes:
            for failure in outcome.failures:
                typer.echo(f"failed: {outcome.name} sample {failure.sample_id}: {failure.reason}", err=True)
        total = sum(len(o.failures) for o in report.outcomes)
        typer.echo(
            f"error: {total} sample(s) failed; finished samples are saved, and running the same "
            "command again retries only the failed ones", err=True,
        )
        raise typer.Exit(1)


@app.command("list")
@user_errors
def list_(
    what: Annotated[str, typer.Argument(help="tasks, models, or all")] = "all",
) -> None:
    """Show the registered tasks, task groups and models, one line each."""
    if what not in ("tasks", "models", "all"):
        raise BenchError(f"`bench list {what}`: choose tasks, models or all")
    rows: list[tuple[str, str, str]] = []
    if what in ("tasks", "all"):
        rows += [("task", n, _task_line(registry.get_task(n))) for n in registry.task_names()]
        rows += [("group", n, registry.get_group(n).description) for n in registry.group_names()]  # type: ignore[union-attr]
    if what in ("models", "all"):
        rows += [("model", n, registry.get_adapter(n).description) for n in registry.adapter_names()]
    width = max(len(name) for _, name, _ in rows)
    for kind, name, description in rows:
        prefix = f"{kind:<6} " if what == "all" else ""
        typer.echo(f"{prefix}{name:<{width}}  {description}")


def _task_line(task: Any) -> str:
    if not task.splits:
        return task.description
    splits = ", ".join(f"{s} (default)" if s == task.default_split else s for s in task.splits)
    return f"{task.description} [splits: {splits}]"


@app.command()
@user_errors
def score(
    path: Annotated[Path, typer.Argument(help="An output directory or one samples_<task>.jsonl file.")],
    output: Annotated[Optional[Path], typer.Option(help="Also write the new results to this JSON file.")] = None,
) -> None:
    """Re-score saved samples (re-parse raw outputs, recompute metrics) without the model."""
    from bench.rescore import rescore_paths
    from bench.results import format_table, write_json_atomic

    results, n_samples, task_versions, warnings = rescore_paths(path)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(format_table(results, n_samples, task_versions))
    if output is not None:
        write_json_atomic(output, {"results": results, "n_samples": n_samples, "source": str(path)})
        typer.echo(f"saved {output}")


@app.command()
@user_errors
def leaderboard(
    paths: Annotated[list[Path], typer.Argument(help="results.json files, run directories, or folders of them.")],
    out: Annotated[Path, typer.Option(help="Where the tables go (the committed ones: leaderboards/).")] = Path(
        "leaderboards"),
) -> None:
    """Aggregate results.json files into the papers' tables (Markdown, CSV, one HTML page); never re-runs a model."""
    from bench.leaderboard import write_leaderboards

    for path in write_leaderboards(paths, out):
        typer.echo(f"wrote {path}")


@app.command("inspect")
@user_errors
def inspect_(
    model: Annotated[str, typer.Option("--model", "-m", help="Adapter name (see `bench list models`).")],
    model_args: Annotated[Optional[str], typer.Option(help="Adapter arguments: k=v,k2=v2 (e.g. size=full).")] = None,
) -> None:
    """Show a model's modules, parameter counts and state_dict keys, built on the meta device (no weights)."""
    from bench.inspect_model import inspect_model

    typer.echo(inspect_model(model, registry.parse_model_args(model_args)))


def _cell_detail(text: str | None) -> str | None:
    """``--language-cell-detail`` checked before any training starts (stage L reads it after stage 0)."""
    from bench.training.language import CELL_DETAILS

    if text is not None and text not in CELL_DETAILS:
        raise typer.BadParameter(f"{text!r}: expected one of {', '.join(CELL_DETAILS)}",
                                 param_hint="--language-cell-detail")
    return text


def _parsed(text: str | None, parse: Any, option: str) -> Any:
    """``text`` parsed by ``parse`` (None: the recipe's default); a ``ValueError`` is a usage error
    of ``option``."""
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None


def _curriculum(text: str | None) -> tuple[tuple[str, int], ...] | None:
    """``--curriculum`` parsed (None: the recipe's default)."""
    from bench.training.runs import parse_curriculum

    return _parsed(text, parse_curriculum, "--curriculum")


def _polish_captions(text: str | None) -> str | None:
    """``--polish-captions`` checked before any training starts."""
    from bench.training.runs import POLISH_CAPTIONS

    if text is not None and text not in POLISH_CAPTIONS:
        raise typer.BadParameter(f"{text!r}: expected one of {', '.join(POLISH_CAPTIONS)}",
                                 param_hint="--polish-captions")
    return text


def _polish_mix(text: str | None) -> tuple[tuple[str, int], ...] | None:
    """``--polish-mix`` parsed (None: the recipe's default)."""
    from bench.training.runs import parse_mix

    return _parsed(text, parse_mix, "--polish-mix")


def _mix(text: str | None) -> tuple[tuple[str, int], ...] | None:
    """``--mix`` parsed (None: the recipe's default)."""
    from bench.training.runs import parse_mix

    return _parsed(text, parse_mix, "--mix")


# Options both tiny-model train commands share (stage L and the alignment of stages 1 and 2).
LanguageEasySteps = Annotated[Optional[int], typer.Option(
    help="Stage L opening steps (text only: REC cut to 2 candidates, classification, POPE).")]
LanguageCycles = Annotated[Optional[int], typer.Option(
    help="Stage L: how many times the mix phase runs (warm restarts: fresh optimizer, warm-up, "
         "cosine decay each time).")]
LanguageWordWeight = Annotated[Optional[float], typer.Option(
    help="Stage L: weight of the word head that reads each word of a region (colour included) at the "
         "region's token; also asked, frozen, in stages 1 and 2 (0: no word head).")]
LanguageBoxMarker = Annotated[Optional[bool], typer.Option(
    help="Stage L and the alignment: a box region (no mask) names its object's words and a marker word, so "
         "that box and mask regions can ask for their own caption styles.")]
LanguageDescriptionWeight = Annotated[Optional[float], typer.Option(
    help="Stage L: weight of the description head that reads, at each region's token, what its shortest "
         "description names besides the category (colour, size, both, nothing, or a relation is needed); "
         "also asked, frozen, in stages 1 and 2 (0: no description head).")]
LanguageCellDetail = Annotated[Optional[str], typer.Option(
    help="Stage L and the alignment: what an image token's cell names of each object it shows: "
         "category, colour (colour and category) or all (size, colour and category).")]
AlignWeight = Annotated[Optional[float], typer.Option(
    help="After stage L, stages 1 and 2: weight of the vision tokens' pull toward stage L's word means "
         "(0: none).")]
VisionAuxWeight = Annotated[Optional[float], typer.Option(
    help="After stage L, stages 1 and 2: weight of stage L's frozen auxiliary heads on the vision run "
         "(0: none).")]
ContrastWeight = Annotated[Optional[float], typer.Option(
    help="After stage L, stages 1 and 2: weight of the contrast in which each word of a vision token must "
         "beat every other vocabulary word in its place (0: none).")]
ContrastTemperature = Annotated[Optional[float], typer.Option(
    help="Temperature of that contrast, relative to the word means' mean squared norm.")]
ImageAlignShare = Annotated[Optional[float], typer.Option(
    help="Weight of the image tokens' alignment and contrast terms beside the region tokens' (1).")]
Mix = Annotated[Optional[str], typer.Option(
    help="Conversations of stage L and stage 2 per kind: KIND=COUNT or KIND:DATASET=COUNT, comma-separated "
         "(default: Recipe.mix; the kinds: classification, caption, relation, rec, pope, uniqueness).")]
PolishSteps = Annotated[Optional[int], typer.Option(
    help="Steps of the closing polish stage (stage 2's parameters at --polish-lr, RefCOCOg's captions "
         "weighted up; default: Recipe.polish_steps; 0: none). On a finished run, it trains on from it.")]
PolishLr = Annotated[Optional[float], typer.Option(help="Peak learning rate of the polish stage.")]
PolishMix = Annotated[Optional[str], typer.Option(
    help="Conversations of the polish stage per kind: KIND=COUNT or KIND:DATASET=COUNT, comma-separated "
         "(default: Recipe.polish_mix, RefCOCOg's captions leading).")]
PolishFrom = Annotated[Optional[Path], typer.Option(
    help="A tiny checkpoint directory of the same model to run only the polish stage on (instead of "
         "stages 0 to 2); needs --polish-steps.")]
PolishCaptions = Annotated[Optional[str], typer.Option(
    help="Which sentences of each RefCOCOg ref the polish stage's captions train on: all, or longest "
         "(its longest sentence only; default: Recipe.polish_captions).")]


@train_app.command("rgpt")
@user_errors
def train_rgpt(
    out: Annotated[Path, typer.Option(help="Checkpoint directory (re-running the same command resumes).")] = Path(
        "checkpoints/rgpt-tiny"),
    data_root: Annotated[Optional[Path], typer.Option(
        help="Data root whose train split is used (a synthetic suite: stage 0 needs its object metadata); "
             "default: a synthetic suite with --train-images training images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed (data order, initialisation).")] = 0,
    train_images: Annotated[Optional[int], typer.Option(
        help="Training images of the default synthetic training suite.")] = None,
    vision_steps: Annotated[Optional[int], typer.Option(
        help="Stage 0 steps (the tiny vision tower's stand-in for CLIP pre-training), at "
             "--vision-start-size.")] = None,
    vision_start_size: Annotated[Optional[int], typer.Option(
        help="Resolution of stage 0's first --vision-steps (default 128); then --vision-finish-steps at "
             "--image-size. 0: all of stage 0 at --image-size.")] = None,
    vision_finish_steps: Annotated[Optional[int], typer.Option(
        help="Stage 0 steps at --image-size after the start resolution (default 4000).")] = None,
    language_easy_steps: LanguageEasySteps = None,
    language_steps: Annotated[Optional[int], typer.Option(
        help="Stage L steps on the whole verbalized mix (the tiny LLM's stand-in for language "
             "pre-training; 0 and --language-easy-steps 0: no stage L).")] = None,
    language_cycles: LanguageCycles = None,
    language_word_weight: LanguageWordWeight = None,
    language_box_marker: LanguageBoxMarker = None,
    language_cell_detail: LanguageCellDetail = None,
    language_description_weight: LanguageDescriptionWeight = None,
    align_weight: AlignWeight = None,
    vision_aux_weight: VisionAuxWeight = None,
    contrast_weight: ContrastWeight = None,
    contrast_temperature: ContrastTemperature = None,
    image_align_share: ImageAlignShare = None,
    stage1_steps: Annotated[Optional[int], typer.Option(help="Stage 1 steps (refinement + connector).")] = None,
    curriculum: Annotated[Optional[str], typer.Option(
        help="Phases that open stage 2, each on one conversation kind or a union of kinds: "
             "KIND=STEPS or KIND+KIND=STEPS, comma-separated "
             "(default: none, the full mix from the start).")] = None,
    stage2_steps: Annotated[Optional[int], typer.Option(help="Stage 2 steps on the full mix (+ LLM).")] = None,
    polish_steps: PolishSteps = None,
    polish_lr: PolishLr = None,
    polish_from: PolishFrom = None,
    mix: Mix = None,
    polish_mix: PolishMix = None,
    polish_captions: PolishCaptions = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Conversations per step.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input resolution of the tiny model.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with the loss.")] = True,
) -> None:
    """Train the tiny RGPT: stage 0 (tiny vision tower), stage L (tiny LLM, text only), then the paper's
    two stages."""
    import dataclasses

    from adapters.rgpt.train import Recipe, train_tiny_rgpt
    from bench.evaluate import resolve_data_root

    overrides = {"seed": seed, "stage1_steps": stage1_steps, "stage2_steps": stage2_steps,
                 "polish_steps": polish_steps, "polish_lr": polish_lr, "polish_mix": _polish_mix(polish_mix),
                 "mix": _mix(mix), "polish_captions": _polish_captions(polish_captions),
                 "batch_size": batch_size, "image_size": image_size,
                 "train_images": train_images, "vision_steps": vision_steps,
                 "vision_finish_steps": vision_finish_steps,
                 "language_easy_steps": language_easy_steps, "language_steps": language_steps,
                 "language_cycles": language_cycles, "language_word_weight": language_word_weight,
                 "language_box_marker": language_box_marker,
                 "language_cell_detail": _cell_detail(language_cell_detail),
                 "language_description_weight": language_description_weight,
                 "align_weight": align_weight, "vision_aux_weight": vision_aux_weight,
                 "contrast_weight": contrast_weight, "contrast_temperature": contrast_temperature,
                 "image_align_share": image_align_share,
                 "curriculum": _curriculum(curriculum)}
    recipe = dataclasses.replace(Recipe(), **{k: v for k, v in overrides.items() if v is not None})
    if vision_start_size is not None:
        recipe = dataclasses.replace(recipe, vision_start_size=vision_start_size or None)
    root = train_tiny_rgpt(resolve_data_root(data_root) if data_root is not None else None, out, recipe,
                           progress=progress, polish_from=polish_from)
    typer.echo(f"saved the tiny RGPT checkpoint to {root}; evaluate it with "
               f"bench run --model rgpt --model-args pretrained={root} --task coco-cls")


@train_app.command("gpt4roi")
@user_errors
def train_gpt4roi(
    out: Annotated[Path, typer.Option(help="Checkpoint directory (re-running the same command resumes).")] = Path(
        "checkpoints/gpt4roi-tiny"),
    data_root: Annotated[Optional[Path], typer.Option(
        help="Data root whose train split is used (a synthetic suite: stage 0 needs its object metadata); "
             "default: the synthetic training suite the tiny RGPT trains on.")] = None,
    seed: Annotated[int, typer.Option(help="Seed (data order, initialisation).")] = 0,
    train_images: Annotated[Optional[int], typer.Option(
        help="Training images of the default synthetic training suite.")] = None,
    init_tower: Annotated[Optional[str], typer.Option(
        help="Checkpoint whose vision_tower.* starts stage 0 (default: the embedded tiny RGPT); 'none': "
             "train the tower from scratch.")] = None,
    vision_steps: Annotated[Optional[int], typer.Option(help="Stage 0 steps (tower adaptation).")] = None,
    vision_distractor_weight: Annotated[Optional[float], typer.Option(
        help="Weight of stage 0's distractor labels: whether another object shares each object's category "
             "(and colour, size), what a RefCOCOg expression's form depends on (default 0: off).")] = None,
    init_llm: Annotated[Optional[str], typer.Option(
        help="A tiny RGPT run directory whose language/llm.safetensors (its LLM after stage L) starts the LLM, "
             "rows matched by token text (default: the committed adapters/rgpt/checkpoints/tiny-base); "
             "'none': a random LLM.")] = None,
    borrow_heads: Annotated[Optional[bool], typer.Option(
        help="Without a stage L of its own, use the alignment terms in stages 1 and 2 with --init-llm's stage-L "
             "heads (language/heads.safetensors), word rows matched by token text (default: on).")] = None,
    least_squares_start: Annotated[Optional[bool], typer.Option(
        help="With the alignment terms on, start mm_projector and the region extractor's updims at their "
             "least-squares maps onto the word means (default: on).")] = None,
    least_squares_regions: Annotated[Optional[int], typer.Option(
        help="Conversations whose regions fit updims' least-squares start (default 4000; fewer: a faster, "
             "rougher fit).")] = None,
    language_easy_steps: LanguageEasySteps = None,
    language_steps: Annotated[Optional[int], typer.Option(
        help="Stage L steps on the whole verbalized mix (default 2000; 0: no stage L, the heads borrowed; "
             "see README).")] = None,
    language_cycles: LanguageCycles = None,
    language_word_weight: LanguageWordWeight = None,
    language_box_marker: LanguageBoxMarker = None,
    language_cell_detail: LanguageCellDetail = None,
    language_description_weight: LanguageDescriptionWeight = None,
    align_weight: AlignWeight = None,
    vision_aux_weight: VisionAuxWeight = None,
    contrast_weight: ContrastWeight = None,
    contrast_temperature: ContrastTemperature = None,
    image_align_share: ImageAlignShare = None,
    stage1_steps: Annotated[Optional[int], typer.Option(help="Stage 1 steps (projector + region extractor).")] = None,
    stage1_lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of stage 1.")] = None,
    stage2_lr: Annotated[Optional[float], typer.Option(
        help="Peak learning rate of stage 2 (its opening phases included).")] = None,
    curriculum: Annotated[Optional[str], typer.Option(
        help="Phases that open stage 2, each on one conversation kind or a union of kinds: "
             "KIND=STEPS or KIND+KIND=STEPS, comma-separated "
             "(default 'none': the full mix only).")] = None,
    stage2_steps: Annotated[Optional[int], typer.Option(help="Stage 2 steps on the full mix (+ LLM).")] = None,
    polish_steps: PolishSteps = None,
    polish_lr: PolishLr = None,
    mix: Mix = None,
    polish_mix: PolishMix = None,
    polish_captions: PolishCaptions = None,
    polish_from: PolishFrom = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Conversations per step.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input resolution of the tiny model.")] = None,
    patch_size: Annotated[Optional[int], typer.Option(
        help="The tiny tower's patch side (default 8; 12 at --image-size 192 keeps the 16x16 grid).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with the loss.")] = True,
) -> None:
    """Train the tiny GPT4RoI: stage 0 (its tiny CLIP), its LLM from the tiny RGPT's stage L, then
    GPT4RoI's two stages and a polish stage."""
    import dataclasses

    from adapters.gpt4roi.train import Recipe, train_tiny_gpt4roi
    from bench.evaluate import resolve_data_root

    overrides: dict[str, Any] = {"seed": seed, "stage1_steps": stage1_steps, "stage2_steps": stage2_steps,
                                 "batch_size": batch_size,
                                 "train_images": train_images, "vision_steps": vision_steps, "image_size": image_size,
                                 "patch_size": patch_size, "vision_distractor_weight": vision_distractor_weight,
                                 "language_easy_steps": language_easy_steps, "language_steps": language_steps,
                                 "language_cycles": language_cycles,
                                 "language_word_weight": language_word_weight,
                                 "language_box_marker": language_box_marker,
                                 "language_cell_detail": _cell_detail(language_cell_detail),
                                 "language_description_weight": language_description_weight,
                                 "align_weight": align_weight, "vision_aux_weight": vision_aux_weight,
                                 "contrast_weight": contrast_weight, "contrast_temperature": contrast_temperature,
                                 "image_align_share": image_align_share,
                                 "curriculum": _curriculum(curriculum),
                                 "polish_steps": polish_steps, "polish_lr": polish_lr,
                                 "polish_mix": _polish_mix(polish_mix), "mix": _mix(mix),
                                 "polish_captions": _polish_captions(polish_captions),
                                 "stage1_lr": stage1_lr, "stage2_lr": stage2_lr, "borrow_heads": borrow_heads,
                                 "least_squares_start": least_squares_start,
                                 "least_squares_regions": least_squares_regions}
    recipe = dataclasses.replace(Recipe(), **{k: v for k, v in overrides.items() if v is not None})
    if init_tower is not None:
        recipe = dataclasses.replace(recipe, init_tower=None if init_tower.lower() == "none" else init_tower)
    if init_llm is not None:
        recipe = dataclasses.replace(recipe, init_llm=None if init_llm.lower() == "none" else init_llm)
    root = train_tiny_gpt4roi(resolve_data_root(data_root) if data_root is not None else None, out, recipe,
                              progress=progress, polish_from=polish_from)
    typer.echo(f"saved the tiny GPT4RoI checkpoint to {root}; evaluate it with "
               f"bench run --model gpt4roi --model-args pretrained={root} --task coco-cls")


@convert_app.command("gpt4roi")
@user_errors
def convert_gpt4roi(
    delta: Annotated[Path, typer.Option(
        help="Directory of the GPT4RoI-7B-delta-V0 release (.bin shards + index, config, tokenizer).")],
    base: Annotated[Path, typer.Option(
        help="Directory of LLaMA-7B in Hugging Face transformers format (.bin or .safetensors, sharded or not).")],
    out: Annotated[Path, typer.Option(help="Directory to write GPT4RoI-7B to (safetensors shards + index).")],
    overwrite: Annotated[bool, typer.Option(help="Replace weight files already in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Apply the GPT4RoI-7B delta to LLaMA-7B (target = delta + base), streaming shard by shard.

    .bin files are read only as plain tensors (weights_only); the result is written as safetensors.
    """
    import json

    from adapters.gpt4roi.convert import OUTPUT_INDEX, apply_delta

    root = apply_delta(delta, base, out, progress=progress, overwrite=overwrite)
    weight_map = json.loads((root / OUTPUT_INDEX).read_text())["weight_map"]
    typer.echo(f"wrote {len(weight_map)} tensors in {len(set(weight_map.values()))} safetensors shard(s) to "
               f"{root}")


@data_app.command("synth")
@user_errors
def data_synth(
    out: Annotated[Path, typer.Option(help="Directory to write the suite into (created).")],
    seed: Annotated[int, typer.Option(help="Generation seed.")] = 0,
    n_train: Annotated[Optional[int], typer.Option(help="Training images (default: the suite's).")] = None,
    n_val: Annotated[Optional[int], typer.Option(help="Evaluation images (default: the suite's).")] = None,
    n_test: Annotated[Optional[int], typer.Option(help="Test images (default: the suite's).")] = None,
) -> None:
    """Write the synthetic region suite (COCO, RefCOCOg, VG, POPE, proposals) to --out."""
    import dataclasses

    from bench.synthetic import SuiteParams, generate_suite

    overrides = {k: v for k, v in {"n_train": n_train, "n_val": n_val, "n_test": n_test}.items() if v is not None}
    if any(v < 0 for v in overrides.values()):
        raise BenchError("image counts must be zero or more")
    params = dataclasses.replace(SuiteParams(seed=seed), **overrides)
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"--out {out} is not empty; choose a new directory")
    root = generate_suite(out, params)
    typer.echo(f"wrote the synthetic suite to {root}; use it with --data-root {root}")


@app.command()
@user_errors
def report(
    output_dir: Annotated[Path, typer.Argument(help="The --output directory of a `bench run`.")],
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write (default: OUTPUT_DIR/report.html).")] = None,
    max_per_task: Annotated[int, typer.Option(
        help="Show at most this many samples of each task (the page says how many are left out).")] = 200,
    data_root: Annotated[Optional[Path], typer.Option(
        help="Where the run's images are, when not at the data root recorded in results.json.")] = None,
) -> None:
    """Render a run's samples as one self-contained HTML gallery: images with their numbered regions,
    prompt, raw and parsed answer, target, right/wrong; filters; coco-cls confusion matrix."""
    from bench.report import write_report

    summary = write_report(output_dir, out, max_per_task=max_per_task, data_root=data_root)
    for warning in summary.warnings:
        typer.echo(f"warning: {warning}", err=True)
    left = f" ({summary.left_out} left out by --max-per-task)" if summary.left_out else ""
    typer.echo(f"wrote {summary.path}: {summary.cards} sample(s){left}")


@app.command()
def doctor() -> None:
    """Check Java, pycocoevalcap (METEOR, PTB tokenizer), torch and CUDA."""
    from tabulate import tabulate

    from bench.doctor import run_checks

    checks = run_checks()
    rows = [["ok" if c.ok else "MISSING", c.name, c.detail, c.needed_for] for c in checks]
    typer.echo(tabulate(rows, headers=["status", "check", "detail", "needed for"], tablefmt="github"))
    required_missing = [c for c in checks if not c.ok and "optional" not in c.needed_for]
    if required_missing:
        raise typer.Exit(1)


@app.command()
@user_errors
def check(
    results: Annotated[list[Path], typer.Argument(
        help="results.json files or `bench run` output directories (one per model), or a directory of them.")],
    baseline: Annotated[Path, typer.Option(
        help="Baseline JSON file, e.g. leaderboards/baselines/embedded.json.")],
    tolerance: Annotated[Optional[list[str]], typer.Option(
        help="Largest allowed absolute change of a metric, as a fraction (default 0.01: one table point); "
             "METRIC=X sets one metric's (e.g. cider=0.05). Repeatable.")] = None,
    update: Annotated[bool, typer.Option(
        "--update", help="Rewrite the given models' baseline entries from RESULTS (other models are kept) "
                         "and print what changed; only for a deliberate, explained change.")] = False,
    subset: Annotated[bool, typer.Option(
        "--subset", help="Check only the models in RESULTS; baseline models without results are no failure.")
    ] = False,
) -> None:
    """Compare results with a stored baseline; exit 1 naming every metric that moved beyond the tolerance."""
    from bench import check as checking

    if update:
        for line in checking.update(results, baseline):
            typer.echo(line)
        typer.echo(f"wrote {baseline}; review the diff and say in the commit message why the scores changed")
        return
    comparison = checking.check(results, baseline, checking.parse_tolerances(tolerance), subset=subset)
    typer.echo(comparison.table())
    for note in comparison.notes:
        typer.echo(f"note: {note}", err=True)
    for failure in comparison.failures:
        typer.echo(f"failed: {failure}", err=True)
    if not comparison.ok:
        typer.echo(f"error: {len(comparison.failures)} check(s) failed against {baseline}; fix the change, or if it "
                   "is deliberate, rewrite the baseline with --update and explain it in the commit message", err=True)
        raise typer.Exit(1)
    typer.echo(f"every metric is within the tolerance of {baseline}")


def main() -> None:
    app(prog_name="bench")


if __name__ == "__main__":
    sys.exit(main())
