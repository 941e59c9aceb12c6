"""Stage L of the tiny models: the LLM's stand-in for language pre-training (bench.training.language)."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import torch

from bench.regions import Region
from bench.synthetic import SuiteParams, generate_suite
from bench.synthetic.vocab import COLOUR_NAMES, SIZE_NAMES
from bench.training.conversations import Conversation, build_conversations
from bench.training.language import (
    AuxiliaryHeads,
    SceneObject,
    Verbal,
    VerbalCollate,
    VerbalizedLM,
    auxiliary_loss,
    auxiliary_targets,
    cell_words,
    fewer_candidates,
    mean_word_embeddings,
    region_words,
    scene_objects,
    shortest_description,
    verbalize,
)
from bench.types import ImageRef
from tasks.rec import build_prompt, parse_choice

RING = SceneObject((0.0, 0.0, 10.0, 10.0), "ring", "red", "small")
STAR = SceneObject((10.0, 0.0, 40.0, 20.0), "star", "blue", "large")


def _object(size: str | None, colour: str, category: str, x: float = 0.0) -> SceneObject:
    return SceneObject((x, 0.0, x + 5.0, 5.0), category, colour, size)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_suite(tmp_path_factory.mktemp("suite") / "s", SuiteParams(n_train=6, n_val=1, n_test=1))


def test_cell_words_by_hand() -> None:
    # A 40 x 20 image padded to 40 x 40 (10 px above and below), split 2 x 2 into 20 px cells.
    # The ring (0..10, 0..10) lies at y 10..20 of the square: top-left cell only. The star
    # (10..40, 0..20) -> y 10..30: 25% of the top-left cell, 50% of the top-right, 25% and
    # 50% of the bottom ones.
    cells = cell_words([RING, STAR], (40, 20), 2)
    assert cells == (("ring", "star"), ("star",), ("star",), ("star",))
    # Under 1% of a cell does not count: a 1 x 1 box is 0.25% of a 20 x 20 cell.
    speck = SceneObject((0.0, 0.0, 1.0, 1.0), "circle", "red", "small")
    assert cell_words([speck], (40, 20), 2) == ((), (), (), ())
    # Each category once per cell, in object order.
    assert cell_words([STAR, RING, STAR], (40, 20), 1) == (("star", "ring"),)


def test_cell_words_name_colour_or_every_word_on_request() -> None:
    # The same cells as above; each word once per cell, in object order.
    assert cell_words([RING, STAR], (40, 20), 2, detail="colour") == (
        ("red", "ring", "blue", "star"), ("blue", "star"), ("blue", "star"), ("blue", "star"))
    assert cell_words([RING, STAR], (40, 20), 2, detail="all")[:2] == (
        ("small", "red", "ring", "large", "blue", "star"), ("large", "blue", "star"))
    red_star = SceneObject((0.0, 0.0, 40.0, 20.0), "star", "red", "large")
    assert cell_words([RING, red_star], (40, 20), 1, detail="colour") == (("red", "ring", "star"),)
    # Off the synthetic suite an object has no colour: its category alone.
    plain = SceneObject((0.0, 0.0, 40.0, 20.0), "star")
    assert cell_words([plain], (40, 20), 1, detail="colour") == (("star",),)
    with pytest.raises(ValueError, match="expected one of category, colour, all"):
        cell_words([RING], (40, 20), 1, detail="size")


def test_cell_words_of_a_stretched_image_by_hand() -> None:
    # GPT4RoI stretches: a 40 x 20 image in 3 x 3 cells of 13.3 x 6.7 px. A 5 x 3 box at y 5..8
    # covers 8.3 px^2 (9%) of the first row's cell and 6.7 px^2 (7.5%) of the second's.
    dot = SceneObject((0.0, 5.0, 5.0, 8.0), "dot", "red", "small")
    stretched = cell_words([dot], (40, 20), 3, square=False)
    assert [i for i, words in enumerate(stretched) if words] == [0, 3] and stretched[0] == ("dot",)
    # Padded to 40 x 40 the box sits at y 15..18: the second row's cell alone (13.3..26.7).
    assert [i for i, words in enumerate(cell_words([dot], (40, 20), 3)) if words] == [3]


def test_shortest_description_follows_the_refcocog_rule_by_hand() -> None:
    # DESCRIPTIONS = category, colour, size, size+colour, none
    ring = _object("small", "red", "ring")
    assert shortest_description(ring, [ring, _object("small", "red", "star", 10)]) == 0  # the only ring
    assert shortest_description(ring, [ring, _object("small", "blue", "ring", 10)]) == 1  # the red ring
    # another red ring: the size tells them apart
    assert shortest_description(ring, [ring, _object("large", "red", "ring", 10)]) == 2
    # a large red ring and a small blue ring: neither colour nor size alone; both do
    both = [ring, _object("large", "red", "ring", 10), _object("small", "blue", "ring", 20)]
    assert shortest_description(ring, both) == 3
    assert shortest_description(ring, [ring, _object("small", "red", "ring", 10)]) == 4  # a twin: a relation
    # a crowd of red rings may hide a ring of any size: colour and size cannot tell it apart
    assert shortest_description(ring, [ring, _object(None, "red", "ring", 10)]) == 4
    assert shortest_description(ring, [ring, _object(None, "blue", "ring", 10)]) == 1
    # unknown: a crowd itself, or an object whose size and colour are not known (other data)
    assert shortest_description(_object(None, "red", "ring"), [ring]) == -100
    plain = SceneObject((0.0, 0.0, 5.0, 5.0), "ring")
    assert shortest_description(plain, [plain]) == -100


def test_verbalize_gives_each_region_its_shortest_description() -> None:
    other_ring = _object("large", "blue", "ring", 20)
    regions = [Region(box=RING.box), Region(box=STAR.box), Region(box=(0.0, 30.0, 5.0, 35.0))]
    verbal = verbalize(regions, (40, 40), [RING, STAR, other_ring], 2)
    assert verbal.descriptions == (1, 0, -100)  # the red ring, the star, nothing there
    assert [verbal.description(i) for i in range(3)] == [1, 0, -100]
    assert Verbal((), (("ring",),)).description(0) == -100  # none given: unknown


def test_region_words_take_the_best_overlap_at_iou_half() -> None:
    assert region_words((0.0, 0.0, 10.0, 10.0), [STAR, RING]) == ("small", "red", "ring")
    assert region_words((0.0, 0.0, 10.0, 12.0), [RING, STAR]) == ("small", "red", "ring")  # IoU 0.83
    assert region_words((0.0, 0.0, 10.0, 20.0), [RING]) == ("small", "red", "ring")  # IoU 0.5 exactly counts
    assert region_words((0.0, 0.0, 10.0, 21.0), [RING]) == ()  # 100 / 210 < 0.5: a false positive
    assert region_words((10.0, 0.0, 40.0, 20.0), [RING, STAR]) == ("large", "blue", "star")


def test_a_box_region_that_names_an_object_gets_the_box_marker() -> None:
    mask = [[0.0, 0.0, 10.0, 0.0, 5.0, 10.0]]  # a polygon: a mask region
    regions = [Region(box=(0.0, 0.0, 10.0, 10.0)), Region(box=(0.0, 0.0, 10.0, 10.0), mask=mask),
               Region(box=(0.0, 0.0, 10.0, 21.0))]  # the last one names no object
    marked = verbalize(regions, (40, 20), [RING, STAR], 2, box_marker="<region>")
    assert marked.regions == (("small", "red", "ring", "<region>"), ("small", "red", "ring"), ())
    assert verbalize(regions, (40, 20), [RING, STAR], 2).regions == (("small", "red", "ring"),) * 2 + ((),)
    assert marked.cells == verbalize(regions, (40, 20), [RING, STAR], 2).cells


def test_scene_objects_name_size_colour_and_category(suite: Path) -> None:
    scenes = scene_objects(suite, "train")
    conversations = build_conversations(suite, "train")
    used = {c.image.key for c in conversations}
    assert used <= set(scenes)
    for (width, height), objects in (scenes[key] for key in used):
        assert width > 0 and height > 0 and objects
        assert len({obj.box for obj in objects}) == len(objects)  # listed by COCO and RefCOCOg: kept once
        for obj in objects:
            *size, colour, category = obj.words  # a crowd has no size
            assert size in ([], [obj.words[0]]) and colour in COLOUR_NAMES and category == obj.category
            assert obj.colour == colour
            assert all(s in SIZE_NAMES for s in size)
    # Every classification region is an annotated object, so it has words, and its category is the answer.
    for c in conversations:
        if c.kind == "classification":
            size, objects = scenes[c.image.key]
            verbal = verbalize(c.regions, size, objects, 4)
            assert len(verbal.cells) == 16
            assert verbal.regions[0][-1] == c.turns[0][1]
            assert any(c.turns[0][1] in cell for cell in verbal.cells)


def test_mean_word_embeddings_average_present_words_and_zero_for_none() -> None:
    embedding = torch.nn.Embedding(5, 2)
    with torch.no_grad():
        embedding.weight.copy_(torch.arange(10.0).view(5, 2))
    ids = torch.tensor([[1, 3, -1], [-1, -1, -1], [4, -1, -1]])
    assert torch.equal(mean_word_embeddings(embedding, ids), torch.tensor([[4.0, 5.0], [0.0, 0.0], [8.0, 9.0]]))


def _rec_conversation(n: int, answer: int) -> Conversation:
    regions = tuple(Region(box=(float(i), 0.0, float(i) + 5, 5.0)) for i in range(n))
    return Conversation(image=ImageRef("a.png"), regions=regions,
                        turns=((build_prompt("the red ring", n), f"Region [{answer}]"),), kind="rec")


def test_fewer_candidates_keeps_the_answer_and_renumbers() -> None:
    words = (("small", "red", "ring"), ("large", "blue", "star"), ("small", "red", "ring"), (), ("x",))
    conversation = _rec_conversation(5, answer=3)
    verbal = Verbal(cells=((),), regions=words, descriptions=(4, 0, 4, -100, -100))
    for seed in range(20):
        easier, easier_verbal = fewer_candidates(conversation, verbal, 2, random.Random(seed))
        (user, answer), = easier.turns
        assert user == build_prompt("the red ring", 2)
        assert len(easier.regions) == len(easier_verbal.regions) == 2
        picked = parse_choice(answer, 2)
        assert easier.regions[picked - 1] == conversation.regions[2]
        assert easier_verbal.regions[picked - 1] == ("small", "red", "ring")
        assert easier_verbal.descriptions[picked - 1] == 4  # each region keeps its description
        assert easier_verbal.descriptions[2 - picked] == (0 if easier_verbal.regions[2 - picked][-1:] == ("star",)
                                                          else -100)
        # The other candidate never names the answer's object again (candidate 1 would).
        assert easier_verbal.regions[2 - picked] in (("large", "blue", "star"), (), ("x",))
        # Original order is kept.
        other = conversation.regions.index(easier.regions[2 - picked])
        assert (other < 2) == (picked == 2)
    assert fewer_candidates(conversation, verbal, 5, random.Random(0)) is None  # only 3 others differ


class _Tokenizer:
    def convert_tokens_to_ids(self, word: str) -> int:
        return {"red": 5, "ring": 6, "blue": 7}[word]


class _Processor:
    tokenizer = _Tokenizer()
    config = type("Config", (), {"region_token_id": 8})()

    def training_tokens(self, turns, n_regions):  # noqa: ANN001, ANN202 - a stand-in
        # [image x2] [region of the 2nd region] [region of the 1st] answer
        return [9, 9, 8, 8, 4], [-100, -100, -100, -100, 4], [1, 0]

    def pad(self, sequences, side, value=0):  # noqa: ANN001, ANN202
        ids = torch.tensor(sequences)
        return (ids if value == 0 else ids.clone()), torch.ones_like(ids)


def test_verbal_collate_orders_region_words_as_the_tokens_take_them() -> None:
    conversation = _rec_conversation(2, answer=1)
    verbal = Verbal(cells=(("ring",), ()), regions=(("red", "ring"), ("blue",)), descriptions=(3, -100))
    batch = VerbalCollate(_Processor(), {id(conversation): verbal}, num_image_tokens=2)([conversation])
    assert batch["region_descriptions"].tolist() == [-100, 3]
    assert batch["cell_words"].shape == (1, 2, 8)
    assert batch["cell_words"][0, :, :2].tolist() == [[6, -1], [-1, -1]]
    assert batch["region_words"][0][:, :2].tolist() == [[7, -1], [5, 6]]
    # The answer names candidate 1 ("red ring"), the region token at column 3.
    assert batch["aux_positions"].tolist() == [[0, 2], [0, 3]]
    assert batch["aux_match"].tolist() == [0.0, 1.0]
    assert batch["aux_index"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="2 cells for 3 image tokens"):
        VerbalCollate(_Processor(), {id(conversation): verbal}, num_image_tokens=3)([conversation])


def test_verbalized_lm_feeds_word_means_where_the_connector_would() -> None:
    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM

    torch.manual_seed(0)
    config = RGPTConfig.tiny(vocab_size=20, image_token_id=10, region_token_id=11, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0)
    model = RGPTForCausalLM(config)
    n_image = config.num_image_tokens
    ids = torch.tensor([[1] + [10] * n_image + [11, 3, 11, 4]])
    cells = torch.full((1, n_image, 8), -1)
    cells[0, 0, :2] = torch.tensor([5, 6])
    regions = [torch.tensor([[7, -1, -1, -1, -1, -1, -1, -1], [-1] * 8])]
    wrapped = VerbalizedLM(model, AuxiliaryHeads(config.text_config.hidden_size), aux_weight=0.0)
    out = wrapped(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids,
                  cell_words=cells, region_words=regions)
    table = model.llm.get_input_embeddings().weight
    expected = table[ids[0]].clone()
    expected[1:1 + n_image] = 0
    expected[1] = (table[5] + table[6]) / 2
    expected[1 + n_image] = table[7]
    expected[3 + n_image] = 0
    reference = model.llm(inputs_embeds=expected[None], labels=ids)
    assert torch.allclose(out.logits, reference.logits, atol=1e-5)
    assert torch.allclose(out.loss, reference.loss, atol=1e-6)


def test_auxiliary_targets_rec_every_candidate_pope_the_asked_word() -> None:
    rec = _rec_conversation(3, answer=2)
    verbal = Verbal(cells=(), regions=(("red", "ring"), ("red", "ring"), ()))
    # ids: <bos> <region> <region> <region> ... ; candidate 1 shows the same object words as the
    # answer's (a duplicate box), so it matches too; the false positive (no words) never does.
    ids, labels = [1, 8, 3, 8, 3, 8, 4], [-100] * 6 + [4]
    assert auxiliary_targets(rec, verbal, ids, labels, [0, 1, 2], 8, _Tokenizer()) == [
        (1, 1.0, 0), (3, 1.0, 1), (5, 0.0, 2)]
    pope = Conversation(image=ImageRef("a.png"), regions=(), turns=(("Is there a ring in the image?", "No"),),
                        kind="pope")
    # "ring" (id 6) appears twice in the prompt; the last one is the question's; labels mark the answer.
    ids, labels = [1, 6, 9, 6, 9, 2], [-100, -100, -100, -100, -100, 2]
    assert auxiliary_targets(pope, Verbal((), ()), ids, labels, [], 8, _Tokenizer()) == [(3, 0.0, -100)]
    yes = dataclasses.replace(pope, turns=(("Is there a ring in the image?", "Yes"),))
    assert auxiliary_targets(yes, Verbal((), ()), ids, labels, [], 8, _Tokenizer()) == [(3, 1.0, -100)]
    classification = dataclasses.replace(rec, kind="classification")
    assert auxiliary_targets(classification, verbal, ids, labels, [0, 1, 2], 8, _Tokenizer()) == []


def test_auxiliary_loss_by_hand() -> None:
    match_logits = torch.tensor([0.0, 2.0, 5.0])
    index_logits = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    match = torch.tensor([1.0, 0.0, -1.0])  # the third has no match target
    index = torch.tensor([0, -100, 1])
    expected_bce = (math.log(2) + (2.0 + math.log1p(math.exp(-2.0)))) / 2
    expected_ce = math.log(2)  # both index targets sit on uniform logits
    loss = auxiliary_loss(match_logits, index_logits, match, index)
    assert loss.item() == pytest.approx(expected_bce + expected_ce, rel=1e-6)
    nothing = auxiliary_loss(match_logits, index_logits, torch.full((3,), -1.0), torch.full((3,), -100))
    assert nothing.item() == 0.0


def test_verbalized_lm_adds_the_auxiliary_loss_from_the_chosen_layer() -> None:
    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM

    torch.manual_seed(0)
    config = RGPTConfig.tiny(vocab_size=20, image_token_id=10, region_token_id=11, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0)
    wrapped = VerbalizedLM(RGPTForCausalLM(config), AuxiliaryHeads(config.text_config.hidden_size, layer=1),
                           aux_weight=0.5)
    n_image = config.num_image_tokens
    ids = torch.tensor([[1] + [10] * n_image + [11, 3, 4]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
             "cell_words": torch.full((1, n_image, 8), -1), "region_words": [torch.full((1, 8), -1)]}
    aux = {"aux_positions": torch.tensor([[0, 1 + n_image]]), "aux_match": torch.tensor([1.0]),
           "aux_index": torch.tensor([0])}
    plain = wrapped(**batch)
    out = wrapped(**batch, **aux)
    hidden = out.hidden_states[1][0, 1 + n_image]
    extra = auxiliary_loss(wrapped.heads.match_head(hidden)[None, 0], wrapped.heads.index_head(hidden)[None],
                           aux["aux_match"], aux["aux_index"])
    assert torch.allclose(out.loss, plain.loss + 0.5 * extra, atol=1e-6)


def test_region_word_loss_by_hand_each_word_against_the_words_the_region_lacks() -> None:
    from bench.training.language import region_word_loss

    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    words = torch.tensor([[1, 3], [2, -1], [-1, -1]])  # region 0: words 1 and 3; region 1: word 2; region 2: none
    # region 0, word 1: softmax over {0, 1, 2} (3 is its other word); word 3: over {0, 2, 3}
    first = -1.0 + math.log(math.exp(0.0) + math.exp(1.0) + math.exp(2.0))
    second = -3.0 + math.log(math.exp(0.0) + math.exp(2.0) + math.exp(3.0))
    third = math.log(4)  # region 1, uniform logits over all four words
    loss = region_word_loss(logits, words)
    assert loss.item() == pytest.approx((first + second + third) / 3, rel=1e-6)
    assert region_word_loss(logits, torch.full((3, 2), -1)).item() == 0.0


def test_verbalized_lm_adds_the_word_loss_at_the_region_tokens() -> None:
    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM
    from bench.training.language import region_word_loss

    torch.manual_seed(0)
    config = RGPTConfig.tiny(vocab_size=20, image_token_id=10, region_token_id=11, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0)
    heads = AuxiliaryHeads(config.text_config.hidden_size, layer=1, vocab_size=20)
    wrapped = VerbalizedLM(RGPTForCausalLM(config), heads, aux_weight=0.0, word_weight=2.0)
    n_image = config.num_image_tokens
    ids = torch.tensor([[1] + [10] * n_image + [11, 3, 11, 4]])
    region_words = torch.full((2, 8), -1)
    region_words[0, :3] = torch.tensor([5, 6, 7])
    region_words[1, :1] = torch.tensor([8])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
             "cell_words": torch.full((1, n_image, 8), -1), "region_words": [region_words]}
    out = wrapped(**batch)
    plain = VerbalizedLM(wrapped.model, heads, aux_weight=0.0, word_weight=0.0)(**batch)
    hidden = out.hidden_states[1][0, [1 + n_image, 3 + n_image]]
    expected = region_word_loss(heads.word_head(hidden), region_words)
    assert expected.item() > 0
    assert torch.allclose(out.loss, plain.loss + 2.0 * expected, atol=1e-6)
    out.loss.backward()
    assert heads.word_head.weight.grad is not None and heads.word_head.weight.grad.abs().sum() > 0


def test_verbalized_lm_adds_the_description_loss_at_the_region_tokens() -> None:
    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM

    torch.manual_seed(0)
    config = RGPTConfig.tiny(vocab_size=20, image_token_id=10, region_token_id=11, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0)
    heads = AuxiliaryHeads(config.text_config.hidden_size, layer=1, descriptions=True)
    wrapped = VerbalizedLM(RGPTForCausalLM(config), heads, aux_weight=0.0, description_weight=0.5)
    n_image = config.num_image_tokens
    ids = torch.tensor([[1] + [10] * n_image + [11, 3, 11, 4]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
             "cell_words": torch.full((1, n_image, 8), -1), "region_words": [torch.full((2, 8), -1)],
             "region_descriptions": torch.tensor([-100, 4])}
    out = wrapped(**batch)
    plain = VerbalizedLM(wrapped.model, heads, aux_weight=0.0)(**batch)
    second_region = out.hidden_states[1][0, 3 + n_image]  # the first has no target
    expected = -torch.log_softmax(heads.description_head(second_region), -1)[4]
    assert torch.allclose(out.loss, plain.loss + 0.5 * expected, atol=1e-6)
    out.loss.backward()
    assert heads.description_head.weight.grad.abs().sum() > 0
    # no target anywhere: nothing added
    unknown = wrapped(**{**batch, "region_descriptions": torch.tensor([-100, -100])})
    assert torch.allclose(unknown.loss, plain.loss, atol=1e-6)


def test_an_image_without_known_objects_is_a_data_error_naming_it_and_the_fix() -> None:
    from bench.errors import DataError
    from bench.training.language import verbalize_all

    conversation = _rec_conversation(2, answer=1)
    with pytest.raises(DataError, match=r"'a\.png'.*--language-steps 0"):
        verbalize_all([conversation], {}, 4)


def test_verbalize_all_works_out_each_images_cells_once_with_the_same_words(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.training import language

    scenes = {"a.png": ((40, 20), [RING, STAR]), "b.png": ((40, 20), [STAR])}
    conversations = [
        Conversation(image=ImageRef(key), regions=(Region(box=box),), turns=(("What is <region1>?", "x"),),
                     kind="caption")
        for key, box in (("a.png", RING.box), ("b.png", STAR.box), ("a.png", STAR.box), ("a.png", RING.box))]
    calls: list[tuple[int, int]] = []
    counted = language.cell_words

    def counting(objects, size, *args):  # noqa: ANN001, ANN002, ANN202
        calls.append(size)
        return counted(objects, size, *args)
    monkeypatch.setattr(language, "cell_words", counting)
    verbals = language.verbalize_all(conversations, scenes, 2, square=False, cell_detail="colour")
    assert len(calls) == 2  # one per image, not one per conversation
    monkeypatch.setattr(language, "cell_words", counted)
    for conversation in conversations:
        size, objects = scenes[conversation.image.key]
        assert verbals[id(conversation)] == verbalize(conversation.regions, size, objects, 2, square=False,
                                                      cell_detail="colour")
    assert verbals[id(conversations[2])].regions == (STAR.words,)
    assert verbals[id(conversations[0])].cells == verbals[id(conversations[3])].cells


def test_language_stages_warm_restarts_and_llm_prefixes() -> None:
    from bench.training.language import LanguageRecipe, language_stages

    stages = language_stages(LanguageRecipe(steps=300, easy_steps=50, cycles=2, warmup_steps=100),
                             llm_prefixes=("model.layers.", "lm_head."))
    assert [(s.name, s.steps, s.data, s.warmup_steps) for s in stages] == [
        ("language-easy", 50, "easy", 25), ("language", 300, "all", 100), ("language-2", 300, "all", 100)]
    assert stages[1].trainable == ("model.model.layers.", "model.lm_head.", "heads.")
    # each cycle decays to zero and starts again from its own warm-up
    assert stages[1].lr_at(299) < 1e-5 and stages[2].lr_at(0) == stages[1].lr_at(0)
