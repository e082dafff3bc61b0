import math
import statistics

import pytest

from d2l_utils.stats import compare, format_mean_sd, mean_sd, noise_band


def test_mean_sd_matches_statistics_module():
    values = [0.871, 0.862, 0.880, 0.869]
    mean, sd = mean_sd(values)
    assert mean == pytest.approx(statistics.fmean(values), abs=1e-15)
    assert sd == pytest.approx(statistics.stdev(values), abs=1e-15)


def test_mean_sd_single_value_and_empty():
    mean, sd = mean_sd([0.5])
    assert mean == 0.5 and math.isnan(sd)
    with pytest.raises(ValueError, match="at least one"):
        mean_sd([])


def test_format_mean_sd_scales_and_rounds():
    assert format_mean_sd([0.1, 0.2, 0.3], scale=100, digits=1) == "20.0 ± 10.0"
    assert format_mean_sd([0.87, 0.87]) == "0.870 ± 0.000"


def test_noise_band_is_twice_welch_standard_error():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    expected = 2 * math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 2)
    assert noise_band(a, b) == pytest.approx(expected)
    with pytest.raises(ValueError, match="two runs"):
        noise_band([1.0], [1.0, 2.0])


def test_compare_verdicts():
    low, high = [0.80, 0.81, 0.82], [0.90, 0.91, 0.92]
    assert compare(high, low).verdict == "higher"
    assert compare(low, high).verdict == "lower"
    assert compare(high, low).difference == pytest.approx(0.10)
    # overlapping runs: a 0.01 difference of means with a 0.01 spread is noise
    assert compare([0.80, 0.82, 0.84], [0.79, 0.81, 0.83]).verdict == "tie"
    assert "within noise" in str(compare([0.80, 0.82, 0.84], [0.79, 0.81, 0.83]))
    assert str(compare(high, low)).startswith("higher by 0.1")
