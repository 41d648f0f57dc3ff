"""Model states of one stage over its data-parallel group: ZeRO-0/1/2 bucketed sync, ZeRO-3 with FSDP2."""
