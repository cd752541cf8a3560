"""Bootstrap intervals and the paired difference to base."""

import math

import pytest

from lmforge.evaluate.stats import Sample, paired_difference, score_interval


def mean_sample(values):
    return Sample([float(v) for v in values], [1.0] * len(values))


def test_sample_value_is_a_ratio_of_sums():
    assert mean_sample([1, 0, 1, 1]).value() == 0.75
    # perplexity: exp(total nll / total tokens) = exp((2 + 4) / (1 + 3)) = exp(1.5)
    assert Sample([2.0, 4.0], [1.0, 3.0], transform="exp").value() == pytest.approx(math.exp(1.5))


def test_interval_brackets_the_score_and_shrinks_with_more_questions():
    small = mean_sample([1, 0] * 10)
    large = mean_sample([1, 0] * 500)
    low_s, high_s = score_interval(small, resamples=1000, seed=1)
    low_l, high_l = score_interval(large, resamples=1000, seed=1)
    assert low_s < 0.5 < high_s and low_l < 0.5 < high_l
    assert high_l - low_l < (high_s - low_s) / 3  # width ~ 1/sqrt(n): 50x the questions, ~7x narrower
    # Binomial standard error at n=20 is 0.112, so a 95% interval is about +-0.22.
    assert 0.3 < high_s - low_s < 0.6


def test_interval_is_seeded_and_degenerate_cases_are_points():
    sample = mean_sample([1, 0, 0, 1, 1])
    assert score_interval(sample, seed=3) == score_interval(sample, seed=3)
    assert score_interval(sample, resamples=0) == [0.6, 0.6]
    assert score_interval(mean_sample([1]), resamples=100) == [1.0, 1.0]
    assert score_interval(mean_sample([1, 1, 1]), resamples=100) == [1.0, 1.0]


def test_paired_difference_sees_a_consistent_gain():
    base = mean_sample([0] * 40 + [1] * 10)
    tuned = mean_sample([1] * 30 + [0] * 10 + [1] * 10)  # fixes 30 questions, breaks none
    result = paired_difference(tuned, base, resamples=2000, seed=0)
    assert result["delta"] == pytest.approx(0.6)
    low, high = result["ci"]
    assert 0 < low < 0.6 < high
    assert result["p_value"] < 0.01


def test_paired_difference_of_equal_scores_straddles_zero():
    base = mean_sample([1, 0] * 25)
    other = mean_sample([0, 1] * 25)  # same accuracy, every answer flipped
    result = paired_difference(other, base, resamples=2000, seed=0)
    assert result["delta"] == 0
    assert result["ci"][0] < 0 < result["ci"][1]
    assert result["p_value"] > 0.5
    same = paired_difference(base, base, resamples=500)
    assert same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0


def test_pairing_makes_a_small_consistent_difference_visible():
    # Questions differ wildly in difficulty but the variant is better on 8 of them and worse on none:
    # pairing removes the difficulty spread, so the interval excludes zero.
    base = mean_sample([1] * 45 + [0] * 55)
    variant = mean_sample([1] * 45 + [1] * 8 + [0] * 47)
    low, _ = paired_difference(variant, base, resamples=2000, seed=0)["ci"]
    assert low > 0


def test_perplexity_difference_uses_the_ratio():
    base = Sample([4.0, 4.0], [2.0, 2.0], transform="exp")  # ppl exp(2)
    tuned = Sample([2.0, 2.0], [2.0, 2.0], transform="exp")  # ppl exp(1)
    result = paired_difference(tuned, base, resamples=200)
    assert result["delta"] == pytest.approx(math.e - math.e**2)


def test_paired_samples_must_match():
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference(mean_sample([1, 0]), mean_sample([1]))
