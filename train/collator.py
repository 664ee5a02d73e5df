"""Groups of (query, positive, negatives) -> padded token batches, through the engine's encoder.

Prompts, special tokens, pooling spans and padding come from
``encoder.tokenize_queries``, ``encoder.format_document``, ``encoder.tokenize``
and ``encoder.pad``: the same code that serves search, so the model is trained
on exactly what it will see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.encoder import Encoder
from train.data import TrainGroup


@dataclass
class Collator:
    """Formats and tokenises a batch; documents are laid out query by query.

    Documents come as ``[pos_0, neg_0_1 .. neg_0_n, pos_1, ...]`` so query ``i``'s
    positive sits at column ``i * (1 + n)``.
    """

    encoder: Encoder
    max_query_length: int = 128
    max_document_length: int = 512
    use_instruction: bool = True

    def instruction(self, group: TrainGroup) -> str | None:
        return group.instruction if self.use_instruction else None

    def __call__(self, groups: Sequence[TrainGroup]) -> dict[str, torch.Tensor]:
        query_ids, instruction_spans = self.encoder.tokenize_queries(
            [g.query for g in groups], [self.instruction(g) for g in groups], self.max_query_length
        )
        documents = []
        targets = []
        for group in groups:
            targets.append(len(documents))
            documents.append(group.positive)
            documents.extend(group.negatives)
        doc_texts = [self.encoder.format_document(d.title, d.text) for d in documents]
        widest = max(len(g.positive_keys) for g in groups)
        positive_keys = torch.full((len(groups), widest), -1, dtype=torch.long)
        for row, group in enumerate(groups):
            keys = sorted(group.positive_keys)
            positive_keys[row, : len(keys)] = torch.tensor(keys, dtype=torch.long)
        device = self.encoder.device
        return {
            "query": self.encoder.pad(query_ids, instruction_spans),
            "documents": self.encoder.pad(
                self.encoder.tokenize(doc_texts, self.max_document_length)
            ),
            "targets": torch.tensor(targets, dtype=torch.long, device=device),
            "doc_keys": torch.tensor([d.key for d in documents], dtype=torch.long, device=device),
            "positive_keys": positive_keys.to(device),
        }
