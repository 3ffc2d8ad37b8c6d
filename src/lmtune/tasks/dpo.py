"""task=dpo: preference tuning of a causal LM on (prompt, chosen, rejected) pairs.

The same loop, methods, checkpoints and strategies as SFT; only the loss differs. Per pair,
with p the policy's and r the reference's log-probabilities of a completion, summed over
its tokens, and n its token count:

    sigmoid  -log σ(β [(p_c - r_c) - (p_r - r_r)])                    (DPO)
    ipo      ((p_c - r_c)/n_c - (p_r - r_r)/n_r - 1/(2β))²            (IPO, per token)
    simpo    -log σ(β (p_c/n_c - p_r/n_r) - γ)                         (SimPO: no reference)

Sums are what the collate and the reference store; a loss that needs per-token means
divides inside its own term. Rewards are β (p - r) (simpo: β p/n); `rewards/accuracies` is
the share of pairs whose chosen reward is the higher.

The reference is the frozen starting model. With `dpo.precompute_ref` (the default) its
log-probabilities are computed once, before training, for every split, so no second model
is held and validation never uses the trained model as its own reference. Otherwise each
step computes them from the model with its adapter switched off: the base a run started
from, or, for `model=runs/sft_x`, the SFT model merged into that base (models/runs.py).
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F

from lmtune.config import Config, ConfigError
from lmtune.data import templates
from lmtune.data.lm import LMSplits, Report
from lmtune.data.preference import PairEncoded, collate_pairs, encode_pairs, load_pairs
from lmtune.errors import LmtuneError
from lmtune.models.logprobs import sequence_logps
from lmtune.tasks.base import EvalSettings, Task

REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class Dpo(Task):
    name = "dpo"
    peft_type = "CAUSAL_LM"
    decodes = True
    exports_onnx = True
    packs = True  # a batch's sequences share rows (collate_pairs)
    max_length = 1024
    no_dropout = True  # policy and reference must score a completion alike
    metrics = ("loss", "rewards/accuracies")
    headline = ("loss", *REWARDS, "preference_accuracy")
    beta, loss_kind, gamma, live = 0.1, "sigmoid", 0.5, False

    def for_run(self, cfg: Config) -> Dpo:
        bound = copy.copy(self)
        d = cfg.dpo
        bound.beta, bound.loss_kind, bound.gamma = d.beta, d.loss, d.simpo_gamma
        bound.live = not d.precompute_ref and d.loss != "simpo"
        return bound

    @property
    def needs_reference(self) -> bool:
        return self.loss_kind != "simpo"

    def check(self, cfg: Config) -> None:
        from lmtune.methods import METHODS

        super().check(cfg)
        if cfg.train.dropout:
            raise ConfigError("train.dropout", "task=dpo scores completions with dropout off "
                              "(policy and reference must score them alike); set it to 0")
        if not cfg.dpo.precompute_ref and cfg.dpo.loss != "simpo" \
                and not METHODS[cfg.method].adapter:
            raise ConfigError("dpo.precompute_ref", f"false scores the reference with the "
                              f"adapter switched off, but method={cfg.method} trains the "
                              "model's own weights: keep it true (computed once, no second "
                              "model)")

    # --------------------------------------------------------------------- data

    def read(self, cfg: Config, train_table=None, test_only: bool = False) -> LMSplits:
        return load_pairs(cfg, train_table, test_only)

    def encode(self, cfg: Config, tokenizer, raw: LMSplits, model_config
               ) -> tuple[dict[str, PairEncoded], Report]:
        templates.check_template(tokenizer, cfg.model)
        return super().encode(cfg, tokenizer, raw, model_config)

    def encode_split(self, cfg: Config, tokenizer, items: list, where: list[str],
                     model_config, train: bool) -> tuple[PairEncoded, Report]:
        return encode_pairs(items, where, cfg, tokenizer, train)

    def decode_kind(self, tokenizer) -> str:
        return "chat"

    def synthetic_rows(self, rows: int, width: int, trained: int, vocab: int,
                       n_labels: int) -> Encoded:
        raise LmtuneError("lmtune plan does not model task=dpo yet: its steps run two "
                          "sequences per pair, and a reference pass before training")

    def collate(self, data: PairEncoded, idx: list[int], pad_id: int
                ) -> dict[str, torch.Tensor]:
        return collate_pairs(data, idx, pad_id)

    # ---------------------------------------------------------------- reference

    def before_training(self, cfg: Config, model, data: dict, how: EvalSettings) -> None:
        if self.needs_reference and not self.live:
            for split in data.values():
                split.ref = reference_logps(model, split, self, how)

    def before_eval(self, model, data: PairEncoded, reference, how: EvalSettings) -> None:
        if reference is not None and self.needs_reference:
            data.ref = reference_logps(reference(), data, self, how)

    # ---------------------------------------------------------------- the loss

    def loss_sum(self, model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
        return self.loss_and_stats(model, batch, autocast)[0]

    def loss_and_stats(self, model, batch: dict[str, torch.Tensor], autocast
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The summed loss of the batch's pairs, and the reward sums of a log row."""
        policy = sequence_logps(model, batch, autocast)  # [2B]
        ref = self.reference_of(model, batch, autocast)
        losses, chosen, rejected = self.pair_losses(policy, ref, batch["completion_tokens"])
        stats = {"rewards/chosen": chosen.sum(), "rewards/rejected": rejected.sum(),
                 "rewards/margins": (chosen - rejected).sum(),
                 "rewards/accuracies": (chosen > rejected).float().sum()}
        return losses.sum(), {k: v.detach() for k, v in stats.items()}

    def reference_of(self, model, batch: dict[str, torch.Tensor], autocast
                     ) -> torch.Tensor | None:
        """The reference's sums [2B]: stored, or (live) from the model with its adapter off;
        None where there is none (simpo, or a plain model evaluated alone)."""
        if "ref" in batch:
            return batch["ref"].to(batch["input_ids"].device)
        inner = getattr(model, "module", model)  # DDP, DeepSpeed
        if not (self.live and self.needs_reference and hasattr(inner, "disable_adapter")):
            return None
        with torch.no_grad(), reference_view(inner) as frozen:
            return sequence_logps(frozen, batch, autocast)

    def pair_losses(self, policy: torch.Tensor, ref: torch.Tensor | None,
                    tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(loss, chosen reward, rejected reward) per pair, from [2B] sums (chosen first)."""
        pc, pr = policy.chunk(2)
        nc, nr = tokens.to(policy.device).float().chunk(2)
        if self.loss_kind == "simpo":
            chosen, rejected = self.beta * pc / nc, self.beta * pr / nr
            return -F.logsigmoid(chosen - rejected - self.gamma), chosen.detach(), \
                rejected.detach()
        if ref is None:
            raise RuntimeError("DPO needs the reference log-probabilities: none were "
                               "computed and the model has no adapter to switch off")
        rc, rr = ref.float().chunk(2)
        chosen, rejected = pc - rc, pr - rr  # log-ratios against the reference
        if self.loss_kind == "ipo":
            losses = (chosen / nc - rejected / nr - 1 / (2 * self.beta)) ** 2
        else:
            losses = -F.logsigmoid(self.beta * (chosen - rejected))
        return losses, self.beta * chosen.detach(), self.beta * rejected.detach()

    def evaluate(self, model, data: PairEncoded, how: EvalSettings) -> dict:
        from lmtune.eval.batched import evaluate_pairs

        return evaluate_pairs(model, data, self, how)


@contextlib.contextmanager
def reference_view(model):
    """The model with its adapter off: the frozen model the run started from. Prompt
    learning adds inputs rather than weights, so its base model is called directly."""
    if model.active_peft_config.is_prompt_learning:
        yield model.get_base_model()
    else:
        with model.disable_adapter():
            yield model


def reference_logps(model, data: PairEncoded, task: Dpo, how: EvalSettings) -> torch.Tensor:
    """The reference's sums [N, 2] (chosen, rejected) for every pair of `data`, in eval mode
    and without grad; an adapter model is scored with its adapter off. With `how.ranks`,
    each rank scores its share of the batches and the shares are added up; a rank short of
    a batch runs a repeat, uncounted, since a sharded model's forward is a collective."""
    from lmtune.eval.batched import pair_passes

    inner = getattr(model, "module", model)
    view = reference_view(inner) if hasattr(inner, "disable_adapter") else \
        contextlib.nullcontext(inner)
    out = torch.zeros(len(data), 2, device=next(inner.parameters()).device)
    with view as frozen:
        for idx, batch in pair_passes(frozen, data, task, how, progress_desc="reference"):
            sums = sequence_logps(frozen, batch, how.autocast).float()
            if idx:  # not a repeat
                out[torch.tensor(idx)] = sums.view(2, -1).T
    if how.ranks is not None:
        torch.distributed.all_reduce(out)
    return out.cpu()
