"""The demo's closing lines: each distilled method against SFT, with the seeds' spread."""

from classkd_jax import demo


def _row(method, rouge, std, seconds, seeds=(0, 1, 2)):
    return {"method": method, "rouge_l": rouge, "rouge_l_std": std,
            "train_seconds": seconds, "seeds": list(seeds)}  # fmt: skip


def test_a_gap_larger_than_both_stds_is_outside_the_spread():
    rows = [_row("sft", 60.0, 0.5, 60.0), _row("gkd", 67.0, 0.4, 90.0),
            _row("classkd", 60.6, 0.3, 150.0)]  # fmt: skip
    gkd, classkd = demo.verdict(rows)
    assert gkd.startswith("gkd vs sft: +7.00 ROUGE-L") and "outside the seeds' spread" in gkd
    assert "1.5x SFT's wall-clock" in gkd
    assert "inside the seeds' spread (0.80, 3 seeds)" in classkd


def test_one_seed_says_it_has_no_spread():
    rows = [_row("sft", 60.0, None, 60.0, [0]), _row("gkd", 59.0, None, 90.0, [0])]
    (line,) = demo.verdict(rows)
    assert "-1.00 ROUGE-L" in line and "one seed" in line
    assert demo.verdict([_row("gkd", 59.0, None, 90.0, [0])]) == []
