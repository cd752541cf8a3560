"""Bootstrap confidence intervals for a score and for the paired difference between two variants.

Every score lmforge reports is a ratio of per-question sums, ``transform(sum(num) / sum(den))``:
accuracy is ``sum(correct) / n`` and perplexity is ``exp(sum(nll) / sum(tokens))``. Resampling
the questions (with replacement) and recomputing the ratio gives a percentile interval. For the
difference to the base model the *same* resampled questions are used for both variants (a paired
bootstrap), which is what makes a small difference on the same questions measurable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

# Resamples are drawn in blocks so that memory stays at (block x questions) integers.
_BLOCK = 256


@dataclass
class Sample:
    """Per-question numerators and denominators of a score (one entry per question, same order)."""

    num: list[float]
    den: list[float]
    transform: Literal["identity", "exp"] = "identity"

    def value(self) -> float:
        """The score on all questions."""
        import numpy as np

        return float(self._apply(np.array([sum(self.num)]) / max(sum(self.den), 1e-12))[0])

    def _apply(self, ratio: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.exp(ratio) if self.transform == "exp" else ratio

    def resampled(self, indices: np.ndarray) -> np.ndarray:
        """The score on each row of ``indices`` (shape: resamples x questions)."""
        import numpy as np

        num = np.asarray(self.num, dtype=np.float64)[indices].sum(axis=1)
        den = np.asarray(self.den, dtype=np.float64)[indices].sum(axis=1)
        return self._apply(num / np.maximum(den, 1e-12))


def _index_blocks(n: int, resamples: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        size = min(_BLOCK, resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def score_interval(sample: Sample, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval ``[low, high]`` of a score; ``[value, value]`` with no resamples."""
    import numpy as np

    value = sample.value()
    n = len(sample.num)
    if resamples <= 0 or n < 2:
        return [value, value]
    values = np.concatenate([sample.resampled(block) for block in _index_blocks(n, resamples, seed)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def paired_difference(
    variant: Sample, base: Sample, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float | list[float]]:
    """Difference ``variant - base`` on the same questions, with a paired bootstrap interval.

    Returns:
        ``{"delta": d, "ci": [low, high], "p_value": p}`` where ``p`` is the two-sided bootstrap
        p-value (twice the share of resamples on the far side of zero, capped at 1).
    """
    import numpy as np

    if len(variant.num) != len(base.num):
        raise ValueError(f"paired samples differ in length: {len(variant.num)} vs {len(base.num)}")
    delta = variant.value() - base.value()
    n = len(base.num)
    if resamples <= 0 or n < 2:
        return {"delta": delta, "ci": [delta, delta], "p_value": 1.0 if delta == 0 else 0.0}
    diffs = np.concatenate(
        [variant.resampled(block) - base.resampled(block) for block in _index_blocks(n, resamples, seed)]
    )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    below = float(np.mean(diffs <= 0))
    above = float(np.mean(diffs >= 0))
    return {"delta": delta, "ci": [float(low), float(high)], "p_value": min(1.0, 2 * min(below, above))}
