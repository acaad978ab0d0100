"""`metering demo --sandbox-tour` tells a new user the whole story and ends on the right invoice."""

from __future__ import annotations

from metering_pipeline.cli import main


def test_demo_prints_the_finalized_invoice(capsys):
    main(["demo", "--sandbox-tour"])
    out = capsys.readouterr().out
    # 13,000 calls: 1,000 × 1¢ + 9,000 × 0.8¢ + 3,000 × 0.5¢ = $97.00, late usage included
    assert "status: open" in out
    assert "qty  13,000       $97.00" in out
    assert out.rstrip().splitlines()[-3].split()[-1] == "$97.00"  # the total line
    assert "refused" in out and "grace" in out
    assert "sk_test_" not in out  # the key never reaches the output
