"""What an executor can run, published next to the plan schema so the planner never plans outside it.

The planner checks every plan it returns against the target executor's capabilities (`make_plan`), the
executor refuses configurations and plans outside its own (`PlanExecutor`), and a test enumerates every
combination on both sides against this one declaration, so the two cannot drift apart again.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from proto.model import ModelSpec
from proto.plan import Plan, RecomputeScope, ZeroStage


class ExecutorCapabilities(BaseModel):
    """The features of plans and jobs an executor implements."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    zero_stages: tuple[ZeroStage, ...] = Field(description="ZeRO stages of model states over a stage block.")
    tied_embeddings_across_stages: bool = Field(
        description="Tied embedding and LM head on different pipeline stages (P > 1)."
    )
    attention_backends: tuple[str, ...] = Field(description="Names accepted for the attention kernel.")
    parameter_dtypes: tuple[str, ...] = Field(description="dtypes of the parameters (master weights).")
    compute_dtypes: tuple[str, ...] = Field(
        description="dtypes of the forward/backward compute (bfloat16: mixed precision over fp32 parameters)."
    )
    deferred_weight_grads: bool = Field(
        default=False,
        description="Backward ops that send the input gradient before computing weight gradients "
        "(`Plan.defer_weight_grads`).",
    )

    mlp_only_recompute: bool = Field(
        default=False,
        description="Recomputed layers that rerun only their MLP half (`PlanOptions.recompute_scope` 'mlp').",
    )

    def plan_problem(self, plan: Plan, model: ModelSpec) -> str | None:
        """Why this executor cannot run `plan` for `model` (None when it can)."""
        if plan.options.zero_stage not in self.zero_stages:
            stages = ", ".join(str(int(z)) for z in self.zero_stages)
            return (
                f"options.zero_stage={int(plan.options.zero_stage)} is not one of {self.name}'s ZeRO stages ({stages})"
            )
        if model.tie_embeddings and plan.pipeline.num_stages > 1 and not self.tied_embeddings_across_stages:
            return (
                f"model {model.name} ties its embeddings and the plan has {plan.pipeline.num_stages} stages; "
                f"{self.name} runs tied embeddings only at P = 1"
            )
        if plan.defer_weight_grads and not self.deferred_weight_grads:
            return f"the plan defers weight gradients (defer_weight_grads) and {self.name} cannot"
        if plan.options.recompute_scope is RecomputeScope.MLP and not self.mlp_only_recompute:
            return f"the plan recomputes MLP halves only (options.recompute_scope='mlp') and {self.name} cannot"
        return None


TORCH_EXECUTOR = ExecutorCapabilities(
    name="the HelixTrain torch executor",
    zero_stages=(ZeroStage(0), ZeroStage(1), ZeroStage(2), ZeroStage(3)),
    tied_embeddings_across_stages=True,
    attention_backends=("auto", "sdpa", "flash", "torch_varlen", "naive"),
    parameter_dtypes=("float32", "float64"),
    compute_dtypes=("float32", "float64", "bfloat16"),
    deferred_weight_grads=True,
    mlp_only_recompute=True,
)
"""`executor/` as of this schema version: ZeRO-0/1/2 bucketed sync, ZeRO-3 with FSDP2, tied embeddings at any P,
the attention backends of `executor.attention.backends`, float32/float64 parameters, bf16 mixed precision on CUDA,
deferred weight gradients (ZeRO-0/1), whole-layer or MLP-only recompute."""
