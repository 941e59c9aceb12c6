"""Stage L: the tiny LLM's stand-in for language pre-training (what Vicuna brings at full size).

Why: the papers start from Vicuna, which already matches words against words: "is a ring
among these objects?", "which candidate is the small red ring?". A tiny LLM from random
weights does not learn that matching from the multimodal conversations: on the tiny RGPT,
POPE stayed a constant "No" and REC stayed at chance while region classification reached
90%. The same matching trained from scratch on text alone is learnable, but only after a
plateau (REC with two candidates written as words: exactly chance for about 1500 steps, then
90% within a few hundred more); behind the vision tokens that plateau was never left. Two
throw-away heads that supervise each hop where it happens remove the plateau
(:func:`auxiliary_targets`).

What: every training conversation is *verbalized*: each vision token the model would see is
replaced by the mean input embedding of the words naming what it shows, and the LLM (its
embeddings included) trains on the answer tokens of these text-only conversations:

* a region token: the size, colour and category words of the object whose box overlaps the
  region's box best (IoU >= 0.5), e.g. ``medium red ring``, and for a box region (no mask)
  a marker word (``box_marker``: :func:`verbalize` says why); a region over no object (a
  simulated detector's false positive) is a zero vector;
* an image token (one per cell of the image-token grid, row-major, over the image padded to
  a square as the processors do): the category words of the objects whose boxes cover at
  least :data:`CELL_MIN_SHARE` of the cell (``cell_detail``: their colours, or all their words,
  too); an empty cell is a zero vector.

Colour and size words come from the synthetic suite's ``meta/objects_{split}.json``; on
other data only the category is used. One vector per vision token, in the place where the
connector's vector will go, so what the LLM learns here (which token to attend to, how to
compare it with the question's words) is what stage 1 then asks the connector to feed.
Stage 1 and 2 run unchanged afterwards. Text-only steps cost no vision work, so this stage
is cheap next to the others.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from bench.data.coco import load_coco_instances
from bench.data.layout import dataset_path
from bench.errors import DataError
from bench.regions import Box, box_iou
from bench.synthetic.expressions import ATTRIBUTE_SETS, Item, plain_description
from bench.synthetic.pope_sampling import TEMPLATE as POPE_TEMPLATE
from bench.training.conversations import load_object_meta
from bench.training.trainer import Stage
from tasks.rec import PROMPT as REC_PROMPT

CELL_MIN_SHARE = 0.01  # as stage 0's presence targets (bench.training.vision.PRESENCE_MIN_SHARE)
REGION_MIN_IOU = 0.5  # a region names the object it overlaps this much (REC's own threshold)
CELL_DETAILS = ("category", "colour", "all")  # what a cell names of each object it shows (cell_words)
IGNORE = -100  # no target (cross-entropy's ignore_index)
MAX_WORDS = 8  # words per vision token (a cell showing more categories keeps the first 8)


@dataclass(frozen=True)
class SceneObject:
    """One annotated object of an image: its box (x0, y0, x1, y1) and the words that name it."""

    box: Box
    category: str
    colour: str | None = None  # known on the synthetic suite only
    size: str | None = None  # known on the synthetic suite only, and there None for a crowd

    @property
    def words(self) -> tuple[str, ...]:
        """(size, colour, category) on the synthetic suite (a crowd: no size), (category,) elsewhere."""
        return tuple(word for word in (self.size, self.colour, self.category) if word is not None)


@dataclass(frozen=True)
class Verbal:
    """What the vision tokens of one conversation show, in words."""

    cells: tuple[tuple[str, ...], ...]  # per image token, row-major over the grid
    regions: tuple[tuple[str, ...], ...]  # per region of the conversation, in its order
    # per region, the index in DESCRIPTIONS of its object's shortest description (-100: unknown);
    # empty: unknown for every region
    descriptions: tuple[int, ...] = ()

    def description(self, region: int) -> int:
        """The ``region``-th region's description (:data:`IGNORE` when none is known)."""
        return self.descriptions[region] if self.descriptions else IGNORE


def scene_objects(data_root: Path, split: str = "train") -> dict[str, tuple[tuple[int, int], list[SceneObject]]]:
    """Image key (file name) -> ((width, height), its objects), from the split's COCO instances
    and, when present, the RefCOCOg instances (the images REC and RefCOCOg captions use)."""
    data_root = Path(data_root)
    meta = load_object_meta(data_root, split)
    scenes: dict[str, tuple[tuple[int, int], list[SceneObject]]] = {}
    paths = [dataset_path(data_root, "coco_instances", split=split)]
    refcocog = dataset_path(data_root, "refcocog_instances")
    if refcocog.is_file():
        paths.append(refcocog)
    seen: dict[str, set[tuple[float, ...]]] = {}
    for path in paths:
        instances = load_coco_instances(path)
        for image in instances.images.values():
            scenes.setdefault(image.file_name, ((image.width, image.height), []))
        for annotation in instances.annotations:
            image = instances.images[annotation.image_id]
            x, y, w, h = annotation.bbox
            box = (x, y, x + w, y + h)
            if box in seen.setdefault(image.file_name, set()):
                continue  # the same object listed by both files
            seen[image.file_name].add(box)
            category = instances.categories[annotation.category_id].name
            known = meta.get(annotation.id, {})
            scenes[image.file_name][1].append(SceneObject(box, category, known.get("colour"), known.get("size")))
    return scenes


def verbalize(regions: Sequence[Any], size: tuple[int, int], objects: Sequence[SceneObject], grid: int,
              square: bool = True, box_marker: str | None = None, cell_detail: str = "category",
              cells: tuple[tuple[str, ...], ...] | None = None) -> Verbal:
    """The words of each image-token cell (``grid`` x ``grid``; ``square``: see :func:`cell_words`)
    and of each region (``bench.regions.Region``), a region given as a box alone (no mask)
    followed by ``box_marker`` when it names an object. ``cells``: the image's :func:`cell_words`
    for these arguments when the caller already has them (they depend on the image alone).

    Why the marker: the two caption tasks shared one prompt (refcocog-cap's version 1; each
    has its own now, and the marker stays in the default recipe), and their references differ in
    style by region type (Visual Genome boxes: "a medium red heart"; RefCOCOg masks: "the
    heart that is medium - sized"). A box pools background that a mask does not, which is
    how the model can tell them apart, but words without the marker are the same for both:
    stage L's LLM answered 189 of 214 val Visual Genome boxes with RefCOCOg's "the" (with the
    marker: 66 after 2000 more steps, none after 4000)."""
    def words(region: Any, obj: SceneObject | None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return (*obj.words, box_marker) if box_marker and region.mask is None else obj.words

    shown = [region_object(r.box, objects) for r in regions]
    if cells is None:
        cells = cell_words(objects, size, grid, square, cell_detail)
    return Verbal(cells,
                  tuple(words(r, obj) for r, obj in zip(regions, shown, strict=True)),
                  tuple(shortest_description(obj, objects) if obj else IGNORE for obj in shown))


def region_object(box: Box, objects: Sequence[SceneObject]) -> SceneObject | None:
    """The object overlapping ``box`` best (IoU >= :data:`REGION_MIN_IOU`); None for none."""
    best, best_iou = None, REGION_MIN_IOU
    for obj in objects:
        iou = box_iou(box, obj.box)
        if iou >= best_iou:
            best, best_iou = obj, iou
    return best


def region_words(box: Box, objects: Sequence[SceneObject]) -> tuple[str, ...]:
    """The words of :func:`region_object`; () for none."""
    best = region_object(box, objects)
    return best.words if best is not None else ()


# What the shortest description of an object among its image's objects names besides the
# category, as RefCOCOg's expressions choose it (bench.synthetic.expressions.plain_description);
# "none": no plain description tells it apart (its expression needs a relation).
DESCRIPTIONS = (*("+".join(attributes) or "category" for attributes in ATTRIBUTE_SETS), "none")


def shortest_description(target: SceneObject, objects: Sequence[SceneObject]) -> int:
    """Index in :data:`DESCRIPTIONS` of ``target``'s shortest description among ``objects`` (which
    hold it), by the
    suite's own rule; :data:`IGNORE` when its colour or size is unknown (other data; a crowd).

    Why: a RefCOCOg caption names a colour or a size only when another object of the category
    needs it told apart ("the ring" / "the red ring" / "the small ring"), so the answer depends on
    the other objects. Stage L's LLM, given every word, picked the right kind for 29% of 200 val
    captions (2000 more steps with colours in the cells: 27%); RGPT's evaluation answers after
    stage 2, 36% (64 of 178); with the right kind the same answers would score CIDEr 574, not 280.
    The head asks for the choice at the region token, as REC's and POPE's hops are asked for.
    Measured (2000 steps on from the colour-cell LLM): the head reads it for 64% of val region
    tokens (93% of those that need no attribute; the most common class is 45%), the answers
    stay at 30%; 2000 more with 12000 extra RefCOCOg captions in the mix, 41%. Slow, not yet a
    gain: off by default (``LanguageRecipe.description_weight``)."""
    if target.colour is None or target.size is None:
        return IGNORE
    items = [Item(key, obj.category, obj.colour or "", obj.size, obj.box, crowd=obj.size is None)
             for key, obj in enumerate(objects)]
    found = plain_description(items[objects.index(target)], items)
    if found is None:
        return DESCRIPTIONS.index("none")
    return ATTRIBUTE_SETS.index(tuple(name for name in ("size", "colour") if getattr(found, name) is not None))


def cell_words(objects: Sequence[SceneObject], size: tuple[int, int], grid: int,
               square: bool = True, detail: str = "category") -> tuple[tuple[str, ...], ...]:
    """Per cell of a ``grid`` x ``grid`` split of the image -- padded to a square (centred), as
    RGPT's processor does, or with ``square=False`` stretched to one, as GPT4RoI's does -- the
    categories (in object order, each once) whose boxes cover >= :data:`CELL_MIN_SHARE` of it;
    with ``detail`` "colour" each such object's colour and category, with "all" all its words
    (size, colour, category), each word once per cell (an object of unknown colour: its category).

    Why the option: with categories alone, whether another object of a region's category has
    another colour (what a RefCOCOg caption's choice of words turns on, see
    :func:`shortest_description`) is not in the words at all."""
    if detail not in CELL_DETAILS:
        raise ValueError(f"cell detail {detail!r}: expected one of {', '.join(CELL_DETAILS)}")
    width, height = size
    if square:
        side = max(width, height)
        x_offset, y_offset = (side - width) / 2, (side - height) / 2
        x_step = y_step = side / grid
    else:
        x_offset = y_offset = 0.0
        x_step, y_step = width / grid, height / grid
    shown = [{"category": (obj.category,), "all": obj.words,
              "colour": (obj.colour, obj.category) if obj.colour else (obj.category,)}[detail] for obj in objects]
    cells = []
    for row in range(grid):
        for col in range(grid):
            x0, y0 = col * x_step - x_offset, row * y_step - y_offset
            names: list[str] = []
            for obj, words in zip(objects, shown, strict=True):
                overlap_w = min(obj.box[2], x0 + x_step) - max(obj.box[0], x0)
                overlap_h = min(obj.box[3], y0 + y_step) - max(obj.box[1], y0)
                if overlap_w > 0 and overlap_h > 0 and overlap_w * overlap_h >= CELL_MIN_SHARE * x_step * y_step:
                    names.extend(word for word in words if word not in names)
            cells.append(tuple(names))
    return tuple(cells)


class _Encoded(NamedTuple):
    """One conversation as :class:`VerbalCollate` batches it (cached per conversation)."""

    ids: list[int]
    labels: list[int]
    cell_words: torch.Tensor  # [T, W]
    region_words: torch.Tensor  # [n, W], in region-token order
    aux: list[Aux]
    descriptions: list[int]  # per region token, in its order


class VerbalCollate:
    """Conversations -> padded token ids and labels (the processor's, vision placeholders
    included), the word ids of every vision token (``cell_words`` [B, T, W] and
    ``region_words``, a list of [n_i, W]; -1 where there is no word), each region token's
    :data:`DESCRIPTIONS` index (``region_descriptions`` [sum n_i], row-major) and the targets of the
    auxiliary heads (:func:`auxiliary_targets`): ``aux_positions`` [N, 2] (row, column),
    ``aux_match`` [N] and ``aux_index`` [N]."""

    def __init__(self, processor: Any, verbals: Mapping[int, Verbal], num_image_tokens: int) -> None:
        self.processor = processor
        self.verbals = verbals  # by id(conversation)
        self.num_image_tokens = num_image_tokens
        self._examples: dict[int, _Encoded] = {}

    def word_ids(self, groups: Sequence[Sequence[str]]) -> torch.Tensor:
        out = torch.full((len(groups), MAX_WORDS), -1, dtype=torch.long)
        for row, words in enumerate(groups):
            ids = [self.processor.tokenizer.convert_tokens_to_ids(w) for w in words[:MAX_WORDS]]
            if ids:
                out[row, :len(ids)] = torch.tensor(ids)
        return out

    def example(self, conversation: Any) -> _Encoded:
        key = id(conversation)
        if key not in self._examples:
            verbal = self.verbals[key]
            if len(verbal.cells) != self.num_image_tokens:
                raise ValueError(f"{len(verbal.cells)} cells for {self.num_image_tokens} image tokens")
            ids, labels, order = self.processor.training_tokens(conversation.turns, len(conversation.regions))
            aux = auxiliary_targets(conversation, verbal, ids, labels, order, self.processor.config.region_token_id,
                                    self.processor.tokenizer)
            self._examples[key] = _Encoded(ids, labels, self.word_ids(verbal.cells),
                                           self.word_ids([verbal.regions[i] for i in order]), aux,
                                           [verbal.description(i) for i in order])
        return self._examples[key]

    def __call__(self, conversations: list[Any]) -> dict[str, Any]:
        from adapters.region_processing import IGNORE_INDEX

        examples = [self.example(c) for c in conversations]
        ids, attention = self.processor.pad([e.ids for e in examples], "right")
        labels, _ = self.processor.pad([e.labels for e in examples], "right", value=IGNORE_INDEX)
        aux = [(row, *target) for row, e in enumerate(examples) for target in e.aux]
        return {"input_ids": ids, "attention_mask": attention, "labels": labels,
                "cell_words": torch.stack([e.cell_words for e in examples]),
                "region_words": [e.region_words for e in examples],
                "aux_positions": torch.tensor([[a[0], a[1]] for a in aux], dtype=torch.long).view(-1, 2),
                "aux_match": torch.tensor([a[2] for a in aux], dtype=torch.float32),
                "aux_index": torch.tensor([a[3] for a in aux], dtype=torch.long),
                "region_descriptions": torch.tensor([d for e in examples for d in e.descriptions], dtype=torch.long)}


Aux = tuple[int, float, int]  # (position, match target or -1: none, index target or -100: none)
MAX_INDEX = 16  # region numbers the index head tells apart (REC offers at most 10 candidates)


def _template_pattern(template: str, **fields: str) -> re.Pattern[str]:
    """A regex matching ``template`` (a ``str.format`` template) with each ``{field}`` replaced by
    ``fields[field]``, so the parse follows the task's own prompt text, not a copy of it."""
    pattern = re.escape(template)
    for field, regex in fields.items():
        pattern = pattern.replace(re.escape("{" + field + "}"), regex)
    return re.compile(pattern)


_POPE_NAME = _template_pattern(POPE_TEMPLATE, article="an?", name="(?P<name>.+)")


def auxiliary_targets(conversation: Any, verbal: Verbal, ids: Sequence[int], labels: Sequence[int],
                      order: Sequence[int], region_token_id: int, tokenizer: Any) -> list[Aux]:
    """What the throw-away heads of stage L learn to read at single positions, one hop each.

    Both REC and POPE need two hops (find the token that matches, then answer from it), and a
    from-scratch LLM sits at chance for thousands of steps before the two form together (the
    "plateau"; measured: REC with two candidates written as word means, 4 layers, 3000 steps at
    chance). Supervising each hop where it happens removes the wait (the same exercise with
    these heads: 93% after 500 steps):

    * REC, at every candidate's region token: does it show the answer's object (match, 1/0),
      and which candidate number it is (index, 0-based) -- what the answer then reads off;
    * POPE, at the asked category's word (which follows the image tokens and so can look at
      them): is the category in the image (match).
    """
    out: list[Aux] = []
    if conversation.kind == "rec":
        from tasks.rec import parse_choice

        target = parse_choice(conversation.turns[0][1], len(conversation.regions))
        if target is None:
            return out
        wanted = verbal.regions[target - 1]
        positions = [p for p, token in enumerate(ids) if token == region_token_id]
        for position, region in zip(positions, order, strict=True):
            words = verbal.regions[region]
            out.append((position, float(bool(words) and words == wanted), min(region, MAX_INDEX - 1)))
    elif conversation.kind == "pope":
        match = _POPE_NAME.search(conversation.turns[0][0])
        if match is None:
            return out
        name = tokenizer.convert_tokens_to_ids(match.group("name").split()[-1].lower())
        prompt = [p for p, (token, label) in enumerate(zip(ids, labels, strict=True)) if label < 0 and token == name]
        if prompt:
            out.append((prompt[-1], float(conversation.turns[0][1].strip().lower().startswith("yes")), -100))
    return out


def mean_word_embeddings(embedding: nn.Embedding, word_ids: torch.Tensor) -> torch.Tensor:
    """[..., W] word ids (-1: none) -> [..., D]: the mean embedding of each group's words (zero for none)."""
    present = (word_ids >= 0).unsqueeze(-1).to(embedding.weight.dtype)
    vectors = embedding(word_ids.clamp(min=0)) * present
    return vectors.sum(-2) / present.sum(-2).clamp(min=1)


class AuxiliaryHeads(nn.Module):
    """The linear heads of stage L on the hidden state after LLM layer ``layer``:
    ``match_head`` (one logit) and ``index_head`` (:data:`MAX_INDEX` logits) for the hops of
    :func:`auxiliary_targets`, and with ``vocab_size`` a ``word_head`` (one logit per vocabulary
    word) that reads every word of each region token at its own position (:func:`region_word_loss`),
    and with ``descriptions`` a ``description_head`` that reads the region's
    :func:`shortest_description` there.
    Trained in stage L; stages 1 and 2 keep them frozen, as probes the vision tokens must
    satisfy (:mod:`bench.training.alignment`). Not part of the checkpoint the adapters load."""

    def __init__(self, hidden_size: int, layer: int = 2, vocab_size: int | None = None,
                 descriptions: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.match_head = nn.Linear(hidden_size, 1)
        self.index_head = nn.Linear(hidden_size, MAX_INDEX)
        self.word_head = nn.Linear(hidden_size, vocab_size) if vocab_size else None
        self.description_head = nn.Linear(hidden_size, len(DESCRIPTIONS)) if descriptions else None

    def description_loss(self, hidden_states: Sequence[torch.Tensor], input_ids: torch.Tensor,
                         region_token_id: int, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``description_head`` at the region tokens of ``input_ids`` (row-major)
        toward ``targets`` [R] (:data:`IGNORE`: none); 0 without the head or a target."""
        hidden = hidden_states[self.layer]
        if self.description_head is None or not (targets != IGNORE).any():
            return hidden.sum() * 0.0
        states = hidden[input_ids == region_token_id]
        return F.cross_entropy(self.description_head(states), targets, ignore_index=IGNORE)

    def word_loss(self, hidden_states: Sequence[torch.Tensor], input_ids: torch.Tensor, region_token_id: int,
                  region_words: Sequence[torch.Tensor]) -> torch.Tensor:
        """:func:`region_word_loss` of ``word_head`` at the region tokens of ``input_ids``
        (row-major, the order of ``torch.cat(region_words)``); 0 without a word head."""
        hidden = hidden_states[self.layer]
        if self.word_head is None or not sum(len(r) for r in region_words):
            return hidden.sum() * 0.0
        states = hidden[input_ids == region_token_id]
        return region_word_loss(self.word_head(states), torch.cat(list(region_words)))

    def loss(self, hidden_states: Sequence[torch.Tensor], positions: torch.Tensor, match: torch.Tensor,
             index: torch.Tensor) -> torch.Tensor:
        """:func:`auxiliary_loss` at ``positions`` [N, 2] (row, column) of ``hidden_states[layer]``."""
        hidden = hidden_states[self.layer][positions[:, 0], positions[:, 1]]
        return auxiliary_loss(self.match_head(hidden)[:, 0], self.index_head(hidden), match, index)


class VerbalizedLM(nn.Module):
    """A region LLM whose vision tokens are word means instead of connector outputs (stage L).

    Wraps a :class:`adapters.region_lm.RegionCausalLM`; its parameters keep their names under
    ``model.`` (the LLM trains as ``model.llm.``). Uses the model's own token substitution
    (``embed_inputs``) and position ids, so the LLM sees the layout it will see with vision.
    With ``aux_weight`` > 0, the :class:`AuxiliaryHeads` ``heads`` add the
    :func:`auxiliary_targets` losses to the answer loss.
    """

    def __init__(self, model: nn.Module, heads: AuxiliaryHeads, aux_weight: float = 1.0,
                 word_weight: float = 0.0, description_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.heads = heads
        self.aux_weight = aux_weight
        self.word_weight = word_weight
        self.description_weight = description_weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
                cell_words: torch.Tensor, region_words: Sequence[torch.Tensor],
                aux_positions: torch.Tensor | None = None, aux_match: torch.Tensor | None = None,
                aux_index: torch.Tensor | None = None, region_descriptions: torch.Tensor | None = None) -> Any:
        from adapters.region_lm import positions_from_mask

        embedding = self.model.llm.get_input_embeddings()
        image = mean_word_embeddings(embedding, cell_words)
        regions = [mean_word_embeddings(embedding, r) for r in region_words]
        embeds = self.model.embed_inputs(input_ids, image, regions)
        auxiliary = self.aux_weight > 0 and aux_positions is not None and len(aux_positions) > 0
        words = self.word_weight > 0 and self.heads.word_head is not None
        described = (self.description_weight > 0 and self.heads.description_head is not None
                     and region_descriptions is not None)
        out = self.model.llm(inputs_embeds=embeds, attention_mask=attention_mask,
                             position_ids=positions_from_mask(attention_mask), labels=labels,
                             output_hidden_states=auxiliary or words or described)
        if auxiliary and out.loss is not None:
            assert aux_positions is not None and aux_match is not None and aux_index is not None
            out.loss = out.loss + self.aux_weight * self.heads.loss(out.hidden_states, aux_positions, aux_match,
                                                                    aux_index)
        if words and out.loss is not None:
            out.loss = out.loss + self.word_weight * self.heads.word_loss(
                out.hidden_states, input_ids, self.model.config.region_token_id, region_words)
        if described and out.loss is not None:
            assert region_descriptions is not None
            out.loss = out.loss + self.description_weight * self.heads.description_loss(
                out.hidden_states, input_ids, self.model.config.region_token_id, region_descriptions)
        return out


def region_word_loss(logits: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """Each word of each region must win a softmax over the vocabulary against every word the
    region does not have: ``logits`` [R, V] (the word head at each region token), ``word_ids``
    [R, W] (-1: none); the region's other words are left out of each softmax. Mean over the
    (region, word) pairs; 0 when no region has words.

    Why: stage L's LLM, given each region's exact words, predicted the colour word of val
    Visual Genome captions for 14% of them (chance 1/7) after two cycles: the answer loss
    alone taught it categories, sizes and the REC and POPE hops, never colour, and its colour
    embeddings stayed ten times closer together than its size or category words. Asking
    for each word at the region's own position, as the REC and POPE heads ask for their
    hops, makes every word readable there, colour included."""
    present = word_ids >= 0
    if not present.any():
        return logits.sum() * 0.0
    row, slot = present.nonzero(as_tuple=True)
    target = word_ids[row, slot]
    pair_logits = logits[row]  # [P, V]
    others = word_ids[row]  # [P, W]: the region's words, the target among them
    hide = present[row] & (others != target[:, None])
    hidden = torch.zeros_like(pair_logits, dtype=torch.long).scatter_add_(1, others.clamp(min=0), hide.long())
    return F.cross_entropy(pair_logits.masked_fill(hidden > 0, float("-inf")), target)


def auxiliary_loss(match_logits: torch.Tensor, index_logits: torch.Tensor, match: torch.Tensor,
                   index: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over positions with a match target (>= 0) plus mean softmax
    cross-entropy over positions with an index target (!= -100); a part with no target is 0."""
    loss = match_logits.new_zeros(())
    has_match = match >= 0
    if has_match.any():
        loss = loss + F.binary_cross_entropy_with_logits(match_logits[has_match], match[has_match])
    if (index != -100).any():
        loss = loss + F.cross_entropy(index_logits, index, ignore_index=-100)
    return loss


_REC_EXPRESSION = _template_pattern(REC_PROMPT, expression="(?P<expression>.*)", regions=".*")


def fewer_candidates(conversation: Any, verbal: Verbal, keep: int,
                     rng: random.Random) -> tuple[Any, Verbal] | None:
    """A REC conversation cut down to ``keep`` candidates (an easier exercise of the same skill):
    the answer's candidate and ``keep - 1`` others, in their original order, drawn among those
    that name something else than the answer's object (so the answer stays unique); renumbered,
    with the prompt rebuilt by :func:`tasks.rec.build_prompt`. None when it cannot be done."""
    from tasks.rec import build_prompt, choice_label, parse_choice

    (user, answer), = conversation.turns
    match = _REC_EXPRESSION.search(user)
    target = parse_choice(answer, len(conversation.regions))
    if match is None or target is None:
        return None
    target -= 1
    others = [i for i, words in enumerate(verbal.regions) if words != verbal.regions[target]]
    if len(others) < keep - 1:
        return None
    chosen = sorted([target, *rng.sample(others, keep - 1)])
    turn = (build_prompt(match.group("expression"), keep), choice_label(chosen.index(target) + 1))
    easier = dataclasses.replace(conversation, regions=tuple(conversation.regions[i] for i in chosen), turns=(turn,))
    return easier, Verbal(verbal.cells, tuple(verbal.regions[i] for i in chosen),
                          tuple(verbal.description(i) for i in chosen))


# ------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class LanguageRecipe:
    """Settings of stage L (recorded next to the checkpoint)."""

    steps: int = 4000  # on the verbalized mix, per cycle (the tiny RGPT's measured setting)
    # Warm restarts: the mix phase runs ``cycles`` times, each with a fresh optimizer, warm-up
    # and cosine decay. Measured on the tiny RGPT: REC in words 55% after one cycle, 81% after
    # a second (POPE 99% both).
    cycles: int = 1
    # Opening phase, before ``steps``: REC cut to ``easy_candidates`` candidates, with the
    # classification and POPE conversations of the mix. 0 steps: no opening phase (the heads
    # made it unnecessary).
    easy_steps: int = 0
    easy_candidates: int = 2
    lr: float = 1e-3
    batch_size: int = 32
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    # Throw-away heads that supervise each hop of REC and POPE (auxiliary_targets says why).
    aux_layer: int = 2  # hidden state after this many LLM layers
    aux_weight: float = 1.0  # 0: no auxiliary heads
    # The word head (region_word_loss says why); it needs AuxiliaryHeads(vocab_size=...).
    word_weight: float = 1.0
    # The description head (shortest_description says why); it needs AuxiliaryHeads(descriptions=True).
    description_weight: float = 0.0


EASY_KINDS = ("classification", "pope")  # what the opening phase keeps of the mix besides the easier REC


def language_stages(recipe: LanguageRecipe, llm_prefixes: Sequence[str] = ("llm.",)) -> list[Stage]:
    """The opening phase (``easy``, when ``easy_steps``) then ``cycles`` runs of the verbalized mix
    (``all``: ``language``, ``language-2``, ...); the
    LLM (``llm_prefixes``: its parameter names in the model) and the auxiliary heads train."""
    trainable = (*(f"model.{prefix}" for prefix in llm_prefixes), "heads.")
    phases = [("language-easy", recipe.easy_steps, "easy")]
    phases += [("language" if cycle == 0 else f"language-{cycle + 1}", recipe.steps, "all")
               for cycle in range(recipe.cycles)]
    out = []
    for name, steps, data in phases:
        if steps:
            out.append(Stage(name, trainable, steps, recipe.lr, recipe.batch_size,
                             warmup_steps=min(recipe.warmup_steps, steps // 2),
                             weight_decay=recipe.weight_decay, data=data))
    return out


def language_sets(examples: Sequence[Any], verbals: dict[int, Verbal],
                  recipe: LanguageRecipe) -> dict[str, list[Any]]:
    """``all``: ``examples``; with an opening phase also ``easy``: every REC example cut down by
    :func:`fewer_candidates` (their verbals are added to ``verbals``) and the :data:`EASY_KINDS`
    examples, in mix order."""
    if not recipe.easy_steps:
        return {"all": list(examples)}
    rng = random.Random(recipe.seed)
    easy = []
    for conversation in examples:
        if conversation.kind == "rec":
            cut = fewer_candidates(conversation, verbals[id(conversation)], recipe.easy_candidates, rng)
            if cut is not None:
                verbals[id(cut[0])] = cut[1]
                easy.append(cut[0])
        elif conversation.kind in EASY_KINDS:
            easy.append(conversation)
    return {"all": list(examples), "easy": easy}


def verbalize_all(examples: Sequence[Any], scenes: Mapping[str, tuple[tuple[int, int], list[SceneObject]]],
                  grid: int, square: bool = True, box_marker: str | None = None,
                  cell_detail: str = "category") -> dict[int, Verbal]:
    """:func:`verbalize` every conversation (keyed by ``id``); an image missing from ``scenes``
    is a :class:`DataError` naming it and the way out.

    Each image's cell words are worked out once: a mix draws an image for several conversations
    (86000 conversations of 20000 images in the default recipes), and the cells were 95% of a
    toy run's time (a 4-image suite: 86000 calls, about 12 min)."""
    verbals: dict[int, Verbal] = {}
    cells: dict[str, tuple[tuple[str, ...], ...]] = {}
    for conversation in examples:
        key = conversation.image.key
        if key not in scenes:
            where = conversation.source or f"a {conversation.kind} conversation"
            raise DataError(f"stage L: training image {key!r} ({where}) is in neither the "
                            "COCO nor the RefCOCOg instances file, so its objects are unknown; add it there, "
                            "or skip stage L (--language-easy-steps 0 --language-steps 0)")
        size, objects = scenes[key]
        if key not in cells:
            cells[key] = cell_words(objects, size, grid, square, cell_detail)
        verbals[id(conversation)] = verbalize(conversation.regions, size, objects, grid, square, box_marker,
                                              cell_detail, cells=cells[key])
    return verbals


def pretrain_language(model: nn.Module, heads: AuxiliaryHeads, processor: Any, examples: Sequence[Any],
                      verbals: Mapping[int, Verbal], grid: int, out_dir: Path,
                      recipe: LanguageRecipe = LanguageRecipe(), progress: bool = True,
                      llm_prefixes: Sequence[str] = ("llm.",)) -> list[dict[str, Any]]:
    """Train ``model.llm`` and ``heads`` in place on the verbalized ``examples`` (``verbals``: from
    :func:`verbalize_all`; ``grid``: the image-token grid's side; ``llm_prefixes``: the LLM's
    parameter names in ``model``). Uses :func:`bench.training.train` under ``out_dir``
    (resumable); returns its log."""
    from bench.training.trainer import train

    verbals = dict(verbals)  # the opening phase adds the verbals of its cut-down conversations
    sets = language_sets(examples, verbals, recipe)
    collate = VerbalCollate(processor, verbals, grid * grid)
    if heads.layer != recipe.aux_layer:
        raise ValueError(f"the heads read layer {heads.layer}, the recipe says {recipe.aux_layer}")
    if recipe.word_weight and heads.word_head is None:
        raise ValueError("word_weight > 0 needs AuxiliaryHeads(..., vocab_size=...)")
    if recipe.description_weight and heads.description_head is None:
        raise ValueError("description_weight > 0 needs AuxiliaryHeads(..., descriptions=True)")
    wrapped = VerbalizedLM(model, heads, aux_weight=recipe.aux_weight, word_weight=recipe.word_weight,
                           description_weight=recipe.description_weight)
    return train(wrapped, sets, collate, language_stages(recipe, llm_prefixes), out_dir, seed=recipe.seed,
                 progress=progress)
