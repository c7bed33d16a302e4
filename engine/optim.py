"""The poly learning rate with linear warm-up and the AdamW that applies it
(docs/method.md#optimisation). The method's own schedule (phases, loss weights, thresholds) is
:mod:`model.schedule`."""
import torch

from model.settings import paper


def poly_warmup_lr(step: int, base_lr: float, max_iters: int, warmup_iters: int = paper("warmup_iters"),
                   warmup_ratio: float = paper("warmup_lr"), power: float = paper("power")) -> float:
    """Learning rate of update ``step`` (0-based: the number of updates already done).

    ``step < warmup_iters``: ``base_lr * (1 - (1 - step / warmup_iters) * (1 - warmup_ratio))``
    (linear from about 0 to ``base_lr``); afterwards ``base_lr * (1 - step / max_iters) ** power``
    (not offset by the warm-up); from ``max_iters`` on the rate stays at its last value.
    The training log prints, at "Iter: N", the rate of step ``N - 1``: 6e-5 with 20,000
    iterations gives 7.960e-6 at Iter 200 (step 199), 5.566e-5 at 1600, 8.077e-9 at 20000
    (step 19999; step 20000 would be 0), and 2.319e-9 at 80000 with 80,000 iterations.
    """
    step = min(step, max_iters - 1)
    if step < warmup_iters:
        return base_lr * (1 - (1 - step / warmup_iters) * (1 - warmup_ratio))
    return base_lr * (1 - step / max_iters) ** power


class PolyWarmupAdamW(torch.optim.AdamW):
    """AdamW (betas (0.9, 0.999), eps 1e-8, weight decay 0.01) with the poly + warm-up rate.

    ``step()`` sets every group's ``lr`` from its own base rate ``group["initial_lr"]`` (the
    group's ``lr`` at construction) for update ``global_step`` (``poly_warmup_lr``), performs
    the update and increments ``global_step``. ``global_step`` is stored in ``state_dict()`` and
    restored by ``load_state_dict()``, so a resumed run continues the schedule.
    """

    def __init__(self, params, lr: float, max_iters: int, weight_decay: float = paper("wt_decay"),
                 betas=(0.9, 0.999), eps: float = 1e-8, warmup_iters: int = paper("warmup_iters"),
                 warmup_ratio: float = paper("warmup_lr"), power: float = paper("power")):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.max_iters = max_iters
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.power = power
        self.global_step = 0
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def current_lrs(self):
        """The rates ``step()`` will use next, one per group."""
        return [poly_warmup_lr(self.global_step, g["initial_lr"], self.max_iters,
                               self.warmup_iters, self.warmup_ratio, self.power)
                for g in self.param_groups]

    def step(self, closure=None):
        for group, lr in zip(self.param_groups, self.current_lrs()):
            group["lr"] = lr
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["global_step"] = self.global_step
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.global_step = int(state_dict.pop("global_step", 0))
        super().load_state_dict(state_dict)
