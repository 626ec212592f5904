"""DistiLLM's adaptive off-policy scheduler (Ko et al., 2024), on the host.

    schedule = AdaptiveSchedule(phi=0.0, threshold=0.1, step_size=0.1)
    schedule.start(dev_loss_at_step_0)
    kind = schedule.choose(u, step, total, buffer_len, capacity)  # 'sample' | 'replay' | 'data'
    schedule.observe(dev_loss)                                    # at each validation

As the reference `finetune.py` does it (replay_ratio 'decreasing'): with
u ~ U[0, 1) drawn from the run's seed and the step, and t/T the progress
(the reference counts steps from 1),
  - u < phi * (1 - t/T), or u < phi while the buffer is not yet full:
    fresh student samples of the batch's prompts (pushed into the buffer);
  - else u < phi: a uniform batch from the replay buffer;
  - else the dataset batch.
phi starts at `distillm.init_phi` and rises by `step_size` (capped at 1)
each time the validation loss is at least `threshold` above the reference
loss, which then becomes the new reference; the first reference is the dev
loss before any training step. With `adaptive=False` phi stays put.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class AdaptiveSchedule:
    phi: float
    threshold: float = 0.1
    step_size: float = 0.1
    adaptive: bool = True
    reference: float | None = None  # the dev loss phi last moved at (or the initial one)

    def start(self, dev_loss: float) -> None:
        """Sets the first reference loss (before training), once."""
        if self.reference is None:
            self.reference = float(dev_loss)

    def sample_threshold(self, step: int, total: int) -> float:
        """phi * (1 - t/T) at 0-based `step` (the reference's 1-based global step)."""
        return self.phi * (1.0 - (step + 1) / max(total, 1))

    def choose(self, u: float, step: int, total: int, buffer_len: int, capacity: int) -> str:
        if u < self.sample_threshold(step, total) or (u < self.phi and buffer_len < capacity):
            return "sample"
        if u < self.phi:
            return "replay"
        return "data"

    def observe(self, dev_loss: float) -> bool:
        """One validation's loss; returns whether phi rose."""
        if not self.adaptive or self.reference is None:
            return False
        if dev_loss >= self.reference + self.threshold:
            self.phi = min(self.phi + self.step_size, 1.0)
            self.reference = float(dev_loss)
            return True
        return False

    def state(self) -> dict:
        return {"phi": self.phi, "reference": self.reference}

    def restore(self, state: dict) -> None:
        self.phi = float(state["phi"])
        self.reference = None if state["reference"] is None else float(state["reference"])
