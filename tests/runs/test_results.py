"""Typed results: written as `to_dict()`, read back as they were."""


def test_results_read_back_as_written() -> None:
    from personavec.runs.results import (
        CalibrationSummary,
        Cell,
        ConditionFit,
        KitFile,
        KitManifest,
        LayerChoice,
    )

    cell = Cell(2, 1.5, 60.0, 3.0, None, 4, 5)
    choice = LayerChoice(1.5, "response-avg", Cell(None, 0.0, 40.0, None, None, 5, 5), [cell], 2)
    assert (
        LayerChoice.from_dict(choice.to_dict()) == choice and choice.to_dict()["layers"][0]["trait"] == 60.0
    )
    summary = CalibrationSummary(0.5, {"graded": ConditionFit(0.5, {"0": None}, 8)})
    assert CalibrationSummary.from_dict(summary.to_dict()) == summary
    kit = KitManifest("evil", "evil", "m", None, {"normal": KitFile(3, 0, 1, None)}, {"mild": 0.5})
    record = {**kit.to_dict(), "seconds": 1.0}  # a stage record holds the manifest and its time
    assert KitManifest.from_dict(record) == kit
