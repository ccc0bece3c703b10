"""What the three model families share: embedding -> blocks -> head, sliceable into stages.

A model is built whole on the meta device, then `keep_stage` drops what another pipeline
stage owns (the blocks outside this stage's range, the embeddings unless it is the first
stage, the final norm and head unless it is the last), the way torchtitan splits a model.
Blocks live in a ModuleDict keyed by their global index, so parameter names stay the HF
checkpoint names on every stage.

A stage maps a list of tensors to a list of tensors: the first stage takes the model inputs,
a middle stage takes what the previous stage returned, and the last stage returns the model
output (float32). That list is what the pipeline ships between stages.
"""

from __future__ import annotations

from torch import Tensor, nn


class StageModel(nn.Module):
    first: bool = True
    last: bool = True

    def blocks(self) -> nn.ModuleDict:
        raise NotImplementedError

    def drop_embeddings(self) -> None:
        raise NotImplementedError

    def drop_head(self) -> None:
        raise NotImplementedError

    def hf_names(self, name: str) -> list[str]:
        """Checkpoint names to try for one of our parameter names, in order."""
        return [name]

    def tied_to(self, name: str) -> str:
        """The parameter whose synthetic values this one shares (tied embeddings)."""
        return name

    def hf_transposed(self, name: str) -> bool:
        """True where the checkpoint stores the weight as [in, out] (GPT-2's Conv1D)."""
        return False

    def init_std(self) -> float:
        return 0.02

    def keep_stage(self, start: int, stop: int, first: bool, last: bool) -> None:
        blocks = self.blocks()
        for key in list(blocks.keys()):
            if not start <= int(key) < stop:
                del blocks[key]
        self.first, self.last = first, last
        if not first:
            self.drop_embeddings()
        if not last:
            self.drop_head()

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """Contiguous, balanced block ranges: the first num_layers % pp stages get one more."""
    if pp > num_layers:
        raise ValueError(
            f"{pp} pipeline stages need at least {pp} layers; the model has {num_layers}"
        )
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))
