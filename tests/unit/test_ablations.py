"""The ablation overlays and the document bench/ablations.py writes from their runs."""

import pytest

from config.loading import load_config
from tests.conftest import ROOT

# -- ablations ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, section, key, value", [
    ("relu_vs_tanh", "model", "activation", "tanh"),
    ("no_lrn", "model", "lrn", "none"),
    ("non_overlapping_pool", "model", "pooling", "non_overlapping"),
    ("one_tower", "model", "towers", 1),
    ("no_pca", "data", "pca_std", 0.0),
    ("no_dropout", "model", "dropout", 0.0),
])
def test_ablation_overlay_changes_only_its_key(name, section, key, value):
    from config.schema import to_dict

    quickstart = [ROOT / "config.yaml", ROOT / "experiments" / "quickstart.yaml"]
    base = to_dict(load_config(quickstart))
    ablated = to_dict(load_config([*quickstart, ROOT / "experiments" / "ablations" / f"{name}.yaml"]))
    assert ablated[section][key] == value != base[section][key]
    base[section][key] = value
    assert ablated == base


def test_ablation_document_reports_deltas_and_the_figure1_ratio():
    from bench.ablations import document, epochs_to_target, parse_args

    def run(name, top1, top5, epochs=()):
        return {"name": name, "errors": {"centre crop": (top1, top5), "10 patches": (top1, top5)},
                "train_epoch_top1": list(epochs), "steps_per_epoch": 10, "seconds": 1.0, "command": []}

    relu, tanh = run("figure1_relu", 0.2, 0.0, [0.8, 0.4, 0.25]), run("figure1_tanh", 0.5, 0.1, [0.9] * 17 + [0.24])
    assert epochs_to_target(relu) == 3 and epochs_to_target(tanh) == 18
    text = document({"baseline": [run("baseline", 0.25, 0.0)], "no_lrn": [run("no_lrn", 0.262, 0.01)]},
                    {"figure1_relu": relu, "figure1_tanh": tanh}, parse_args([]))
    assert "| no_lrn | `no_lrn.yaml` | 0.262 | +1.2% | 0.010 | +1.0% |" in text
    assert "ReLU 3, tanh 18: ReLU is **6.0x** faster" in text
    seeds = {"baseline": [run("baseline", 0.2, 0.0), run("baseline", 0.3, 0.0)],
             "no_pca": [run("no_pca", 0.3, 0.1), run("no_pca", 0.4, 0.0)]}
    text = document(seeds, {}, parse_args(["--seeds", "0", "1", "--no-figure1"]))
    assert "| no_pca | `no_pca.yaml` | 0.350 (0.300, 0.400) | +10.0% | 0.050 (0.100, 0.000) | +5.0% |" in text
    unfinished = run("figure1_tanh", 0.9, 0.5, [0.9] * 30)
    text = document({"baseline": [run("baseline", 0.25, 0.0)]}, {"figure1_relu": relu, "figure1_tanh": unfinished},
                    parse_args([]))
    assert "after 30 epochs, so ReLU is **more than 10.0x** faster" in text


def test_ablation_document_keeps_the_notes_written_by_hand(tmp_path):
    from bench.ablations import NOTES_MARKER, write_keeping_notes

    out = tmp_path / "ABLATIONS.md"
    write_keeping_notes(out, "# first\n")
    assert out.read_text() == "# first\n\n" + NOTES_MARKER + "\n"
    out.write_text(out.read_text() + "## Reading the table\nby hand\n")
    write_keeping_notes(out, "# second\n")
    assert out.read_text() == "# second\n\n" + NOTES_MARKER + "\n## Reading the table\nby hand\n"
