"""A global batch: the sequence lengths of one iteration."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proto.fingerprint import fingerprint
from proto.wire_types import AS_EXACT_INT, MAX_SEQ_ID, MAX_SEQUENCE_LENGTH

SeqId = Annotated[int, Field(ge=0, le=MAX_SEQ_ID, description="A sequence id (signed 64-bit, >= 0)."), AS_EXACT_INT]
Length = Annotated[int, Field(ge=1, le=MAX_SEQUENCE_LENGTH, description="Tokens in one sequence (>= 1)."), AS_EXACT_INT]


class Batch(BaseModel):
    """Sequence ids and their token counts. Ids are unique; order is the data loader's order.

    Cross-field rules: `seq_ids` has exactly one entry per length, and no id repeats.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq_ids: list[SeqId] = Field(description="Unique id per sequence; as many as `lengths`.")
    lengths: list[Length] = Field(min_length=1, description="Tokens per sequence, each >= 1.")

    @model_validator(mode="after")
    def _check(self) -> Batch:
        if len(self.seq_ids) != len(self.lengths):
            raise ValueError(f"seq_ids has {len(self.seq_ids)} entries but lengths has {len(self.lengths)}")
        if len(set(self.seq_ids)) != len(self.seq_ids):
            raise ValueError("seq_ids must be unique")
        for i, n in enumerate(self.lengths):
            if n < 1:
                raise ValueError(f"lengths[{i}] = {n}: every length must be a positive integer")
        return self

    @classmethod
    def from_lengths(cls, lengths: list[int]) -> Batch:
        return cls(seq_ids=list(range(len(lengths))), lengths=list(lengths))

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def length_of(self) -> dict[int, int]:
        return dict(zip(self.seq_ids, self.lengths, strict=True))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self)
