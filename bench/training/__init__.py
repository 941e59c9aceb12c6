"""Training support: instruction conversations built from a data root, and a generic two-stage trainer.

* :mod:`bench.training.conversations`: :func:`build_conversations` turns the
  ``train`` split of a data root (the synthetic suite by default) into
  single-task conversations whose user turns are the evaluation prompts
  verbatim (classification, captioning, REC, POPE) plus spatial-relation turns.
* :mod:`bench.training.trainer`: :func:`train` runs :class:`Stage` s (which
  parameters train, steps, learning rate) over any ``torch.nn.Module`` whose
  forward returns a loss; deterministic and resumable.

Both are model-agnostic: a model package supplies the collate function that
turns conversations into tensors.
"""

from bench.training.conversations import KINDS, Conversation, all_texts, build_conversations, kind_counts, mix
from bench.training.trainer import Stage, train

__all__ = ["KINDS", "Conversation", "Stage", "all_texts", "build_conversations", "kind_counts", "mix", "train"]
