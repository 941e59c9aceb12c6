"""Generate the whole synthetic suite, and keep a cached default copy.

See :mod:`bench.synthetic` for the on-disk layout. :func:`generate_suite`
builds every image (:mod:`bench.synthetic.records`), then writes each dataset
file from the per-image records. Files of one split depend only on that split's
images and the non-size parameters, so growing ``n_train`` leaves every val and
test file (images, COCO val, POPE, proposals, VG split lists) byte-identical.
The files that span all splits (RefCOCOg refs and instances, VG regions and
image data, ``suite.json``) naturally change.

:func:`default_suite_dir` generates the default suite once per machine into a
cache directory, atomically, so concurrent first runs never see half a suite.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.synthetic.params import SPLITS, SUITE_VERSION, SuiteParams, params_hash
from bench.synthetic.pope_sampling import VARIANTS, PopeImage, build_questions
from bench.synthetic.records import IMAGE_DIR, ImageRecord, build_image
from bench.synthetic.vocab import CATEGORIES, CATEGORY_BY_ID
from bench.synthetic.writers import (
    FIXED_DATE,
    coco_dataset,
    coco_image,
    write_json,
    write_jsonl,
    write_pickle,
)

DEFAULT_PARAMS = SuiteParams()
SUITE_NAME = "region-bench synthetic suite"
SUITE_FILE = "suite.json"
# Ref ids restart per split at a fixed offset so val/test ref ids do not move
# when the train split grows (at most 7 refs per image, 99,999 images).
REF_ID_OFFSET: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}
SENTS_PER_REF = 3  # sent_id = ref_id * 3 + k
POPE_SPLIT = "val"
MAX_WORKERS = 4
PARALLEL_MIN_IMAGES = 120  # below this, starting worker processes costs more than it saves
CHUNK_IMAGES = 25
STALE_SCRATCH_S = 3600.0  # a scratch directory this old belongs to a killed generator
POPE_STREAM = 1_000_003  # seed-sequence tag for POPE's random draws (not an image index)

# Every layout key, pointed at this suite. ``{split}`` is filled by the tasks.
PATHS: dict[str, str] = {
    "pope_questions": "pope/coco_pope_{split}.json",
    "pope_images": IMAGE_DIR,
    "coco_instances": "coco/annotations/instances_{split}2017.json",
    "coco_images": IMAGE_DIR,
    "refcocog_refs": "refcocog/refs(umd).p",
    "refcocog_instances": "refcocog/instances.json",
    "refcocog_images": IMAGE_DIR,
    "refcocog_proposals": "proposals/refcocog_umd_{split}.json",
    "vg_regions": "vg/region_descriptions.json",
    "vg_image_data": "vg/image_data.json",
    "vg_split": "vg/{split}.json",
    "vg_images": IMAGE_DIR,
}


def generate_suite(out_dir: Path, params: SuiteParams = DEFAULT_PARAMS, workers: int | None = None) -> Path:
    """Write the suite for ``params`` into ``out_dir`` (new or empty); return it.

    ``workers`` processes build the images (default: one per CPU, at most 4;
    small suites are built in-process). The output does not depend on it.
    """
    params.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise BenchError(f"{out_dir}: refusing to generate a suite into a non-empty directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    records = _build_images(out_dir, params, workers)
    _write_coco(out_dir, records, params)
    _write_refcocog(out_dir, records, params)
    _write_vg(out_dir, records)
    _write_pope(out_dir, records[POPE_SPLIT], params)
    _write_proposals(out_dir, records)
    for split in SPLITS:
        write_json(out_dir / "meta" / f"objects_{split}.json", [r.meta for r in records[split]])
    write_json(out_dir / "paths.json", PATHS)
    _write_manifest(out_dir, params)
    return out_dir


def _build_images(root: Path, params: SuiteParams, workers: int | None) -> dict[str, list[ImageRecord]]:
    """Build every image, in parallel when it pays; records come back in order."""
    jobs = [(split, i) for split, count in params.split_sizes().items() for i in range(count)]
    if workers is None:
        workers = min(_cpu_count(), MAX_WORKERS) if len(jobs) >= PARALLEL_MIN_IMAGES else 1
    built: list[ImageRecord] | None = None
    if workers > 1:
        size = max(1, min(CHUNK_IMAGES, -(-len(jobs) // workers)))
        chunks = [jobs[k : k + size] for k in range(0, len(jobs), size)]
        try:
            # "spawn", not "fork": the caller may hold threads (torch), and
            # forking a threaded process can deadlock the child.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                parts = pool.map(_build_chunk, [(root, params, chunk) for chunk in chunks])
                built = [record for part in parts for record in part]
        except Exception:
            # No worker processes here (a sandbox, a daemonic parent, a worker
            # that died): build in-process instead. A genuine bug in
            # build_image raises again below, so nothing is hidden.
            built = None
    if built is None:
        built = _build_chunk((root, params, jobs))
    records: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
    for record in built:
        records[record.split].append(record)
    return records


def _build_chunk(job: tuple[Path, SuiteParams, list[tuple[str, int]]]) -> list[ImageRecord]:
    root, params, images = job
    return [build_image(root, params, split, index) for split, index in images]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cache_root() -> Path:
    """``$REGION_BENCH_CACHE`` or ``~/.cache/region-bench``."""
    configured = os.environ.get("REGION_BENCH_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "region-bench"


def default_suite_dir(params: SuiteParams | None = None) -> Path:
    """The cached suite for ``params`` (default parameters), generated on first use.

    The suite is built in a temporary sibling directory and renamed into place,
    so a reader never sees a half-written suite; when two processes race, the
    first rename wins and the loser discards its copy.
    """
    params = params or DEFAULT_PARAMS
    root = cache_root()
    target = root / f"synthetic-{SUITE_VERSION}-{params_hash(params)}"
    if (target / SUITE_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(root, target.name)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        generate_suite(scratch, params)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / SUITE_FILE).is_file():
                raise BenchError(f"{target}: exists but holds no complete suite; delete it and run again") from None
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _remove_stale_scratch(root: Path, name: str) -> None:
    """Delete scratch directories left by generators that were killed.

    Only old ones: a recent scratch directory may belong to a process that is
    generating right now.
    """
    cutoff = time.time() - STALE_SCRATCH_S
    for scratch in root.glob(f".{name}.tmp-*"):
        try:
            if scratch.is_dir() and scratch.stat().st_mtime < cutoff:
                shutil.rmtree(scratch, ignore_errors=True)
        except OSError:
            continue  # another process removed it first


def _info(params: SuiteParams, split: str) -> dict[str, object]:
    """COCO ``info``: the parameters that shape this split's content.

    Other splits' sizes are left out so a split's file depends on that split
    only; ``suite.json`` records all parameters.
    """
    shaping = {k: v for k, v in asdict(params).items() if k not in ("n_train", "n_val", "n_test")}
    return {
        "description": SUITE_NAME,
        "url": "",
        "version": SUITE_VERSION,
        "year": int(FIXED_DATE[:4]),
        "contributor": "region-bench",
        "date_created": FIXED_DATE.replace("-", "/"),
        "split": split,
        "params": shaping,
    }


def _images(records: list[ImageRecord]) -> list[dict[str, object]]:
    return [coco_image(r.image_id, r.file_name, r.width, r.height) for r in records]


def _write_coco(root: Path, records: dict[str, list[ImageRecord]], params: SuiteParams) -> None:
    for split in ("train", "val"):
        anns = [a for r in records[split] for a in r.annotations]
        data = coco_dataset(_info(params, split), _images(records[split]), anns)
        write_json(root / "coco" / "annotations" / f"instances_{split}2017.json", data)


def _write_refcocog(root: Path, records: dict[str, list[ImageRecord]], params: SuiteParams) -> None:
    """``refs(umd).p`` in the release's schema plus the matching ``instances.json``."""
    refs = []
    for split in SPLITS:
        ref_id = REF_ID_OFFSET[split]
        for record in records[split]:
            stem, suffix = record.file_name.rsplit(".", 1)
            for partial in record.refs:
                sentences = []
                for k, sent in enumerate(partial["sentences"]):  # type: ignore[arg-type]
                    sentences.append(
                        {
                            "tokens": sent.split(),
                            "raw": sent[:1].upper() + sent[1:],
                            "sent_id": ref_id * SENTS_PER_REF + k,
                            "sent": sent,
                        }
                    )
                refs.append(
                    {
                        "image_id": record.image_id,
                        "split": split,
                        "sentences": sentences,
                        # Like the release: the image's file name with the ann id appended.
                        "file_name": f"{stem}_{partial['ann_id']}.{suffix}",
                        "category_id": partial["category_id"],
                        "ann_id": partial["ann_id"],
                        "sent_ids": [s["sent_id"] for s in sentences],
                        "ref_id": ref_id,
                    }
                )
                ref_id += 1
    write_pickle(root / "refcocog" / "refs(umd).p", refs)
    everything = [r for split in SPLITS for r in records[split]]
    anns = [a for r in everything for a in r.annotations]
    write_json(
        root / "refcocog" / "instances.json",
        coco_dataset(_info(params, "all"), _images(everything), anns),
    )


def _write_vg(root: Path, records: dict[str, list[ImageRecord]]) -> None:
    everything = [r for split in SPLITS for r in records[split]]
    write_json(
        root / "vg" / "region_descriptions.json",
        [{"regions": r.regions, "id": r.image_id} for r in everything],
    )
    write_json(
        root / "vg" / "image_data.json",
        [
            {
                "width": r.width,
                "url": None,
                "height": r.height,
                "image_id": r.image_id,
                "coco_id": None,
                "flickr_id": None,
            }
            for r in everything
        ],
    )
    for split in SPLITS:
        write_json(root / "vg" / f"{split}.json", [r.image_id for r in records[split]])


def _pope_images(records: list[ImageRecord], params: SuiteParams) -> list[PopeImage]:
    """Each image's distinct categories (crowds included: dots are circles), in a
    per-image shuffled order so positives are not always the biggest objects."""
    images = []
    split_index = SPLITS.index(POPE_SPLIT)
    for index, record in enumerate(records):
        names = list(
            dict.fromkeys(CATEGORY_BY_ID[int(a["category_id"])].name for a in record.annotations)  # type: ignore[arg-type]
        )
        rng = np.random.default_rng(np.random.SeedSequence([params.seed, split_index, index, POPE_STREAM]))
        order = rng.permutation(len(names))
        images.append(PopeImage(record.file_name, tuple(names[int(i)] for i in order)))
    return images


def _write_pope(root: Path, records: list[ImageRecord], params: SuiteParams) -> None:
    images = _pope_images(records, params)
    order = {c.name: c.id for c in CATEGORIES}
    for variant_index, variant in enumerate(VARIANTS):
        rng = np.random.default_rng(np.random.SeedSequence([params.seed, POPE_STREAM, variant_index]))
        questions = build_questions(images, variant, order, rng)
        write_jsonl(root / "pope" / f"coco_pope_{variant}.json", questions)


def _write_proposals(root: Path, records: dict[str, list[ImageRecord]]) -> None:
    for split in ("val", "test"):
        detections = [d for r in records[split] for d in r.detections]
        write_json(root / "proposals" / f"refcocog_umd_{split}.json", detections)


def _write_manifest(root: Path, params: SuiteParams) -> None:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative != SUITE_FILE:
            files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    write_json(
        root / SUITE_FILE,
        {
            "name": SUITE_NAME,
            "version": SUITE_VERSION,
            "params": asdict(params),
            "splits": params.split_sizes(),
            "files": files,
        },
    )
