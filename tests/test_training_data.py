"""Training conversations built from the synthetic suite's train split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.data.coco import load_coco_instances
from bench.data.layout import dataset_path
from bench.data.refcocog import load_refcocog
from bench.errors import DataError
from bench.regions import box_iou
from bench.synthetic import SuiteParams, default_suite_dir, generate_suite
from bench.synthetic.relations import Box as XYWH
from bench.synthetic.relations import holds
from bench.training.conversations import (
    DEFAULT_SUITE_COUNTS,
    KINDS,
    RELATION_QUESTION,
    RELATION_WHAT,
    RELATION_WORDS,
    Conversation,
    all_texts,
    build_conversations,
    fingerprint,
    kind_counts,
    longest_phrasings,
    mix,
)
from tasks.captioning import REFCOCOG_PROMPT, VG_PROMPT, RefCocogCaptioning, VisualGenomeCaptioning
from tasks.coco_cls import CocoClassification
from tasks.pope import PopeAdversarial, PopePopular, PopeRandom
from tasks.rec import IOU_THRESHOLD, RefCOCOgREC, build_prompt, parse_choice

PLACEHOLDER = re.compile(r"<region(\d+)>")


@pytest.fixture(scope="module")
def root() -> Path:
    return default_suite_dir()


@pytest.fixture(scope="module")
def conversations(root: Path) -> list[Conversation]:
    return build_conversations(root)


def of_kind(conversations: list[Conversation], kind: str) -> list[Conversation]:
    return [c for c in conversations if c.kind == kind]


def image_id(conversation: Conversation) -> int:
    return int(Path(conversation.image.key).stem)


def test_counts_on_the_default_suite(conversations: list[Conversation]) -> None:
    counts = kind_counts(conversations)
    assert counts == DEFAULT_SUITE_COUNTS
    assert all(counts[kind] > 0 for kind in KINDS)
    assert sum(counts.values()) == len(conversations)
    assert len({image_id(c) for c in conversations}) == 300


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    small = generate_suite(tmp_path / "suite", SuiteParams(n_train=12, n_val=0, n_test=0))
    first, second = build_conversations(small), build_conversations(small)
    assert first == second and fingerprint(first) == fingerprint(second)
    other = build_conversations(small, seed=1)
    assert fingerprint(other) != fingerprint(first)
    assert kind_counts(other)["classification"] == kind_counts(first)["classification"]
    assert set(kind_counts(first)) == set(KINDS) and all(kind_counts(first).values())


def test_placeholders_match_regions(conversations: list[Conversation]) -> None:
    for c in conversations:
        assert c.kind in KINDS
        assert len(c.turns) >= 1
        for user, assistant in c.turns:
            numbers = [int(n) for n in PLACEHOLDER.findall(user)]
            assert sorted(set(numbers)) == list(range(1, len(c.regions) + 1)), (c.source, user)
            assert not PLACEHOLDER.search(assistant), (c.source, assistant)
            assert assistant.strip() == assistant and assistant
        width, height = c.image.size
        for region in c.regions:
            x1, y1, x2, y2 = region.box
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert c.image.path is not None and c.image.path.is_file()


def test_classification_prompts_are_the_eval_prompts(root: Path, conversations: list[Conversation]) -> None:
    train = of_kind(conversations, "classification")
    evaluation = CocoClassification(root, split="val").load_samples()
    assert {c.turns[0][0] for c in train} == {s.prompt for s in evaluation}  # all four phrasings, same suffix
    instances = load_coco_instances(dataset_path(root, "coco_instances", split="train"))
    names = {c.name for c in instances.categories.values()}
    for c in train:
        annotation = instances.annotation(int(c.source.split(":")[1]))
        assert c.turns[0][1] == instances.categories[annotation.category_id].name
        assert c.regions[0].box == instances.region(annotation, with_mask=False).box
        assert c.regions[0].mask == annotation.segmentation  # as coco-cls gives it
    assert {c.turns[0][1] for c in train} == names


def test_caption_prompts_are_the_eval_prompt(root: Path, conversations: list[Conversation]) -> None:
    train = of_kind(conversations, "caption")
    vg = [c for c in train if c.source.startswith("vg:")]
    refcocog = [c for c in train if c.source.startswith("refcocog:")]
    assert vg and refcocog
    # Each dataset's conversations ask with that task's prompt, and the two prompts differ.
    assert {s.prompt for s in RefCocogCaptioning(root).load_samples()} == {REFCOCOG_PROMPT}
    assert {s.prompt for s in VisualGenomeCaptioning(root).load_samples()} == {VG_PROMPT}
    assert {c.turns[0][0] for c in refcocog} == {REFCOCOG_PROMPT} != {c.turns[0][0] for c in vg} == {VG_PROMPT}
    assert all(c.regions[0].mask is None for c in vg)  # box-only, as vg-cap
    assert all(c.regions[0].mask is not None for c in refcocog)  # with the mask, as refcocog-cap


def shape(prompt: str) -> str:
    return re.sub(r'"[^"]*"', '"EXPRESSION"', prompt)


def test_rec_prompts_are_the_eval_prompts(root: Path, conversations: list[Conversation]) -> None:
    train = of_kind(conversations, "rec")
    evaluation = RefCOCOgREC(root).load_samples()
    for sample in evaluation[:50]:
        assert sample.prompt == build_prompt(sample.metadata["expression"], len(sample.regions))
    for c in train:
        expression = re.search(r'"(.*)"', c.turns[0][0]).group(1)
        assert c.turns[0][0] == build_prompt(expression, len(c.regions))
        assert 2 <= len(c.regions) <= 10
    # Every candidate count of the evaluation occurs in training (a lone candidate is rare on both sides:
    # the simulated detector rarely finds a single object in a 3-7 object scene).
    assert {shape(s.prompt) for s in evaluation if len(s.regions) > 1} <= {shape(c.turns[0][0]) for c in train}


def test_rec_answers_point_to_a_matching_candidate(root: Path, conversations: list[Conversation]) -> None:
    data = load_refcocog(dataset_path(root, "refcocog_refs"), dataset_path(root, "refcocog_instances"))
    refs = {ref.ref_id: ref for ref in data.split("train")}
    train = of_kind(conversations, "rec")
    positions, distractors, gt_boxes = set(), 0, 0
    for c in train:
        ref = refs[int(c.source.split(":")[1].split("-")[0])]
        gt = data.instances.region(data.instances.annotation(ref.ann_id), with_mask=False).box
        k = parse_choice(c.turns[0][1], len(c.regions))
        assert k is not None, c.turns[0][1]
        ious = [box_iou(r.box, gt) for r in c.regions]
        assert ious[k - 1] >= IOU_THRESHOLD and ious[k - 1] == max(ious)
        assert all(r.mask is None for r in c.regions)  # boxes, as refcocog-rec
        positions.add(k)
        distractors += sum(iou < IOU_THRESHOLD for iou in ious)
        gt_boxes += any(r.box == gt for r in c.regions)
    assert positions == set(range(1, 11))  # shuffled: the answer is not always in the same place
    assert distractors > 3 * len(train)  # jittered duplicates, other objects and false positives
    assert 0 < gt_boxes < len(train) / 2  # the exact box only when the simulated detector missed


def test_pope_questions_are_the_eval_questions(root: Path, conversations: list[Conversation]) -> None:
    train = of_kind(conversations, "pope")
    texts = {c.turns[0][0] for c in train}
    for task in (PopeRandom, PopePopular, PopeAdversarial):
        assert {s.prompt for s in task(root).load_samples()} <= texts
    assert all(c.regions == () for c in train)
    assert {c.turns[0][1] for c in train} == {"Yes", "No"}
    yes = sum(c.turns[0][1] == "Yes" for c in train) / len(train)
    assert 0.45 <= yes <= 0.55


def test_pope_answers_follow_the_annotations(root: Path, conversations: list[Conversation]) -> None:
    instances = load_coco_instances(dataset_path(root, "coco_instances", split="train"))
    present: dict[int, set[str]] = {}
    for a in instances.annotations:
        present.setdefault(a.image_id, set()).add(instances.categories[a.category_id].name)
    asked: dict[int, set[str]] = {}
    for c in of_kind(conversations, "pope"):
        name = re.fullmatch(r"Is there an? (.+) in the image\?", c.turns[0][0]).group(1)
        assert (name in present[image_id(c)]) == (c.turns[0][1] == "Yes"), c.source
        assert name not in asked.setdefault(image_id(c), set()), "a question repeated on one image"
        asked[image_id(c)].add(name)
    assert set(asked) == set(present)


def test_relations_are_true(conversations: list[Conversation]) -> None:
    train = of_kind(conversations, "relation")
    questions = {RELATION_QUESTION.format(phrase=p): r for r, p in RELATION_WORDS.items()}
    kinds = {"yes/no": 0, "what": 0}
    for c in train:
        (user, answer), = c.turns
        a, b = (XYWH(r.box[0], r.box[1], r.box[2] - r.box[0], r.box[3] - r.box[1]) for r in c.regions)
        if user == RELATION_WHAT:
            kinds["what"] += 1
            relation = next(r for r, p in RELATION_WORDS.items() if f" is {p} the " in answer)
            assert holds(relation, a, b), (c.source, answer)
        else:
            kinds["yes/no"] += 1
            assert (answer == "Yes") == holds(questions[user], a, b), (c.source, user, answer)
    assert kinds["what"] > 100 and kinds["yes/no"] > 100


def test_uniqueness_answers_agree_with_the_suites_own_expressions(root: Path,
                                                                 conversations: list[Conversation]) -> None:
    """The words a RefCOCOg expression of the suite chooses are the first of category, colour and size
    that makes its object the only one: exactly what the uniqueness questions answer."""
    from bench.synthetic.vocab import COLOUR_NAMES, RELATION_PHRASES, SIZE_WORDS

    answers: dict[int, dict[str, str]] = {}
    for c in of_kind(conversations, "uniqueness"):
        (user, answer), = c.turns
        assert re.fullmatch(r"Is <region1> the only [a-z -]+ in the image\?", user) and answer in ("Yes", "No")
        _, ann_id, variant = c.source.split(":")
        answers.setdefault(int(ann_id), {})[variant] = answer
    data = load_refcocog(dataset_path(root, "refcocog_refs"), dataset_path(root, "refcocog_instances"))
    sizes = {word for words in SIZE_WORDS.values() for word in words}
    relations = [phrase for phrases in RELATION_PHRASES.values() for phrase in phrases]
    seen = {"category": 0, "colour": 0, "size": 0, "none": 0}
    for ref in data.split("train"):
        text = ref.expressions[0].text.lower()
        words = set(text.replace("-", " - ").split()) | set(text.split())
        asked = answers[ref.ann_id]
        if any(f" {phrase} " in f" {text} " for phrase in relations):
            first = "none"  # no plain description tells it apart: a relation is needed
        elif words & set(COLOUR_NAMES) and words & sizes:
            first = "none"  # size and colour together: neither alone is enough
        elif words & set(COLOUR_NAMES):
            first = "colour"
        elif words & sizes:
            first = "size"
        else:
            first = "category"
        expected = {"category": "Yes"} if first == "category" else {
            variant: "Yes" if variant == first else "No" for variant in ("category", "colour", "size")
            if variant != "size" or first != "colour"}  # colour tells it apart: size need not be "No"
        assert {k: asked[k] for k in expected} == expected, (ref.expressions[0].text, asked)
        seen[first] += 1
    assert all(seen.values()), seen


def test_train_split_only(root: Path, conversations: list[Conversation]) -> None:
    train_ids = {i.id for i in load_coco_instances(dataset_path(root, "coco_instances", split="train")).images.values()}
    held_out = {i.id for i in load_coco_instances(dataset_path(root, "coco_instances", split="val")).images.values()}
    for split in ("val", "test"):
        held_out |= set(json.loads(dataset_path(root, "vg_split", split=split).read_text()))
    data = load_refcocog(dataset_path(root, "refcocog_refs"), dataset_path(root, "refcocog_instances"))
    held_out |= {ref.image_id for split in ("val", "test") for ref in data.split(split)}
    used = {image_id(c) for c in conversations}
    assert used <= train_ids
    assert not used & held_out


def test_all_texts(conversations: list[Conversation]) -> None:
    texts = all_texts(conversations)
    assert len(texts) == 2 * sum(len(c.turns) for c in conversations)
    assert texts[:2] == list(conversations[0].turns[0])
    assert VG_PROMPT in texts and REFCOCOG_PROMPT in texts and "Yes" in texts and "No" in texts


def test_mix_reweights_deterministically(conversations: list[Conversation]) -> None:
    counts = {"classification": 100, "rec": 5000, "pope": 0}
    mixed = mix(conversations, counts, seed=3)
    assert kind_counts(mixed) == {**dict.fromkeys(KINDS, 0), **counts}
    assert mixed == mix(conversations, counts, seed=3) and mixed != mix(conversations, counts, seed=4)
    rec = of_kind(conversations, "rec")
    repeats = {}
    for c in of_kind(mixed, "rec"):
        repeats[c.source] = repeats.get(c.source, 0) + 1
    assert len(repeats) == len(rec) and set(repeats.values()) == {1, 2}  # 5000 = 3428 + 1572
    # One dataset's share of a kind: RefCOCOg's captions apart from Visual Genome's.
    by_dataset = mix(conversations, {"caption:refcocog": 300, "caption:vg": 7}, seed=3)
    assert [c.source.split(":")[0] for c in by_dataset] == ["refcocog"] * 300 + ["vg"] * 7
    assert all(c.kind == "caption" for c in by_dataset)
    assert mix(conversations, {"caption:refcocog": 300}, seed=3) == by_dataset[:300]
    with pytest.raises(DataError, match="no caption:coco conversations"):
        mix(conversations, {"caption:coco": 1})
    with pytest.raises(DataError, match="no nonsense conversations"):
        mix(conversations, {"nonsense": 1})  # a kind the data lacks: a user error naming it
    with pytest.raises(ValueError):
        mix(conversations, {"rec": -1})


def test_longest_phrasings_keep_one_sentence_per_refcocog_ref(root: Path,
                                                              conversations: list[Conversation]) -> None:
    refcocog = load_refcocog(dataset_path(root, "refcocog_refs"), dataset_path(root, "refcocog_instances"))
    longest = {max(ref.expressions, key=lambda e: len(e.text.split())).text
               for ref in refcocog.split("train")}  # the first of equally long ones
    kept = longest_phrasings(conversations)
    captions = [c for c in kept if c.kind == "caption" and c.source.startswith("refcocog:")]
    assert len(captions) == len(refcocog.split("train")) < len(
        [c for c in conversations if c.kind == "caption" and c.source.startswith("refcocog:")])
    assert {c.turns[0][1] for c in captions} == longest
    assert any(len(ref.expressions) > 1 for ref in refcocog.split("train"))  # the test cuts something
    assert "the only" in " ".join(c.turns[0][1].lower() for c in captions)  # "the only ring" over "the ring"
    # Everything else is kept, in order.
    others = [c for c in conversations if not (c.kind == "caption" and c.source.startswith("refcocog:"))]
    assert [c for c in kept if not (c.kind == "caption" and c.source.startswith("refcocog:"))] == others
    assert longest_phrasings(kept) == kept


def test_conversations_feed_the_trainer(conversations: list[Conversation], tmp_path: Path) -> None:
    """End to end without images: a bag-of-words model learns the answer of text-decidable kinds."""
    import torch

    from bench.training import Stage, train

    examples = [c for c in conversations if c.kind in ("classification", "pope", "rec")][::7]
    words = sorted({w for text in all_texts(examples) for w in text.split()})
    index = {w: i for i, w in enumerate(words)}

    def collate(batch: list[Conversation]) -> dict[str, torch.Tensor]:
        bags = torch.zeros(len(batch), len(words))
        for row, c in enumerate(batch):
            for w in c.turns[0][0].split():
                bags[row, index[w]] = 1.0
        return {"bags": bags, "target": torch.tensor([index[c.turns[0][1].split()[0]] for c in batch])}

    class BagModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(len(words), 32)
            self.out = torch.nn.Linear(32, len(words))

        def forward(self, bags: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.out(torch.relu(self.hidden(bags)))
            return {"loss": torch.nn.functional.cross_entropy(logits, target)}

    stages = [Stage("stage1", ("out.",), steps=10, lr=1e-2, batch_size=32),
              Stage("stage2", ("hidden.", "out."), steps=30, lr=1e-2, batch_size=32, warmup_steps=5)]
    log = train(BagModel(), examples, collate, stages, tmp_path, progress=False)
    assert sum(r["loss"] for r in log[-10:]) < 0.5 * sum(r["loss"] for r in log[:10])
