"""Questions asked of runs: the BSQ-versus-uniform verdict of a sweep, against hand-worked tables."""
import pandas as pd
import pytest
import torch

from bsq_explore.analysis import VERDICT_COLUMNS, verdict, verdict_sentence
from bsq_explore.catalog import list_runs, sweep_table
from bsq_explore.runs import load_run

from test_sweep import EXAMPLES


def table(*rows):
    """A sweep table (runs.sweep_table's columns that verdict reads) from (name, kind, bits, acc[, status])."""
    return pd.DataFrame([dict(name=r[0], kind=r[1], nbits=r[2] if r[1] == "uniform" else 8, avg_bits=r[2],
                              test_acc=r[3], status=r[4] if len(r) > 4 else "finished") for r in rows])


def test_verdict_picks_the_best_bsq_run_at_each_size_and_the_smallest_one_as_good():
    sweep = table(("f", "float", 32, 0.90),
                  ("a1", "bsq", 5.0, 0.895), ("a2", "bsq", 2.5, 0.880), ("a3", "bsq", 1.5, 0.870),
                  ("a4", "bsq", 0.0, 0.10), ("a5", "bsq", 1.2, 0.99, "failed"),  # a failed run never counts
                  ("u2", "uniform", 2, 0.875), ("u4", "uniform", 4, 0.890), ("u1", "uniform", 1, 0.30))
    v = verdict(sweep).set_index("baseline")
    assert list(v.reset_index().columns) == VERDICT_COLUMNS and list(v.index) == ["u1", "u2", "u4"]
    # at <= 2 bits the best BSQ run is a3 (87.0 %), 0.5 points below u2's 87.5 %
    assert v.loc["u2", "best_run"] == "a3" and v.loc["u2", "gain"] == pytest.approx(-0.5)
    # a3 is also the smallest BSQ run within half a point of u2: 2 / 1.5 bits
    assert v.loc["u2", "smallest_run"] == "a3" and v.loc["u2", "size_ratio"] == pytest.approx(2 / 1.5)
    # at <= 4 bits: a2 (88.0 %), 1 point below u4; the smallest within half a point of 89 % is a1 at 5 bits
    assert v.loc["u4", "best_run"] == "a2" and v.loc["u4", "gain"] == pytest.approx(-1.0)
    assert v.loc["u4", "smallest_run"] == "a1" and v.loc["u4", "size_ratio"] == pytest.approx(4 / 5)
    # at <= 1 bit only the collapsed a4 fits; every BSQ run beats u1's 30 %, the smallest live one is a3
    assert v.loc["u1", "best_run"] == "a4" and v.loc["u1", "gain"] == pytest.approx(100 * (0.10 - 0.30))
    assert v.loc["u1", "smallest_run"] == "a3"


def test_the_verdict_in_one_sentence_names_what_bsq_matches_with_fewer_bits_and_what_it_does_not():
    sweep = table(("f", "float", 32, 0.90), ("a1", "bsq", 5.0, 0.895), ("a2", "bsq", 2.5, 0.880),
                  ("a3", "bsq", 1.5, 0.870), ("u2", "uniform", 2, 0.875), ("u4", "uniform", 4, 0.890),
                  ("u1", "uniform", 1, 0.30))  # size ratios as worked out above: u2 2/1.5, u4 4/5, u1 1/1.5
    assert verdict_sentence(sweep) == ("BSQ is as accurate as uniform 2-bit quantization (within half a "
                                                "point) and 1.33x smaller; no BSQ run is as accurate as uniform 1- "
                                                "and 4-bit with fewer bits.")
    everything = table(("a1", "bsq", 1.0, 0.9), ("u2", "uniform", 2, 0.9), ("u8", "uniform", 8, 0.9))
    assert verdict_sentence(everything) == ("BSQ is as accurate as uniform 2- and 8-bit quantization (within half a "
                                            "point) and 2.00x and 8.00x smaller.")
    assert verdict_sentence(table(("a1", "bsq", 1.0, 0.9))) == "This sweep has no finished uniform baseline to compare BSQ with."


def test_the_hessian_twins_get_their_own_verdict_from_their_runs_alone():
    sweep = table(("a1", "bsq", 1.5, 0.90), ("h1", "hessian", 1.5, 0.87), ("h2", "hessian", 3.0, 0.876),
                  ("u2", "uniform", 2, 0.875), ("u4", "uniform", 4, 0.89))
    v = verdict(sweep, "hessian").set_index("baseline")
    # at <= 2 bits only h1 (87.0 %); the smallest twin within half a point of u2's 87.5 % is h1 (2 / 1.5)
    assert v.loc["u2", "best_run"] == "h1" and v.loc["u2", "gain"] == pytest.approx(-0.5)
    assert v.loc["u2", "smallest_run"] == "h1" and v.loc["u2", "size_ratio"] == pytest.approx(2 / 1.5)
    # at <= 4 bits h2 (87.6 %) beats h1, 1.4 points below u4; no twin is within half a point of 89 %,
    # though the BSQ run a1 is: a BSQ run never stands in for a twin
    assert v.loc["u4", "best_run"] == "h2" and v.loc["u4", "gain"] == pytest.approx(-1.4)
    assert pd.isna(v.loc["u4", "smallest_run"])
    assert verdict_sentence(sweep, "hessian") == ("Hessian is as accurate as uniform 2-bit quantization "
                                                           "(within half a point) and 1.33x smaller; no Hessian run "
                                                           "is as accurate as uniform 4-bit with fewer bits.")
    assert verdict_sentence(sweep).startswith("BSQ is as accurate as uniform 2- and 4-bit")
    assert verdict_sentence(table(("u2", "uniform", 2, 0.9)), "hessian") == (
        "This sweep has no finished Hessian run yet to compare with its uniform baselines.")
    # a finished twin that qualifies nowhere (larger and less accurate) is a verdict, not a missing run
    assert verdict_sentence(table(("h1", "hessian", 6.0, 0.80), ("u4", "uniform", 4, 0.90)), "hessian") == (
        "No Hessian run is as accurate as uniform 4-bit with fewer bits.")
    with pytest.raises(ValueError, match="kind must be one of bsq, hessian, got 'uniform'"):
        verdict(sweep, "uniform")


def test_deaths_by_layer_lists_each_removed_bit_with_the_epoch_that_removed_it():
    from bsq_explore.analysis import deaths_by_layer

    bits = pd.DataFrame([dict(layer=layer, layer_index=i, bit=b, step=s, stage="bsq", epoch=s)
                         for i, (layer, lives) in enumerate([("a", {7: 1, 6: 2, 5: 3}), ("b", {7: 3, 6: 3})])
                         for b, last in lives.items() for s in range(last + 1)])  # a plane logged up to step `last`
    table = deaths_by_layer(bits)  # the run's last step is 3: a's bit 7 died at bsq 2, bit 6 at bsq 3
    assert table.to_dict("records") == [dict(layer="a", alive=1, died="7 at bsq 2, 6 at bsq 3"),
                                        dict(layer="b", alive=2, died="")]


def test_verdict_says_none_where_no_bsq_run_qualifies():
    v = verdict(table(("a1", "bsq", 6.0, 0.80), ("u4", "uniform", 4, 0.90))).iloc[0]
    assert v.best_run is None and v.gain is None and v.smallest_run is None and v.size_ratio is None
    assert verdict(table(("a1", "bsq", 6.0, 0.80))).empty


def test_verdict_of_the_shipped_digits_sweep_has_a_row_per_baseline():
    sweep = sweep_table(list_runs(EXAMPLES), "digits")
    v = verdict(sweep)
    assert v.baseline.tolist() == ["digits-u2", "digits-u3", "digits-u4", "digits-u8"]
    assert (v.best_bits <= v.bits).all() and v.best_acc.notna().all()



def test_what_if_scores_a_fixed_sample_and_all_images_give_the_runs_own_score():
    from bsq_explore.analysis import WHAT_IF_IMAGES, WhatIf
    from bsq_explore.runs import load_run

    run = load_run(EXAMPLES / "fashion-a0.02")
    sample, every = WhatIf(run), WhatIf(run, images=0)
    assert sample.images == WHAT_IF_IMAGES and every.images == 10_000
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # a sample in bfloat16 where the CPU has it; all in float32
    assert sample.in_bf16 == native and not every.in_bf16
    assert every.trained["test_acc"] == pytest.approx(run.summary["test_acc"], abs=1e-9)
    assert abs(sample.trained["test_acc"] - every.trained["test_acc"]) < 0.06  # about 4 SE of a 500 sample
    layer = next(iter(sample.bits))
    assert sample.evaluate({layer: 1}) is sample.evaluate({layer: 1})  # scored once, then kept
    assert sample.change({layer: 1})["avg_bits"] < sample.trained["avg_bits"]


def test_epoch_seconds_is_the_median_epoch_of_the_finished_runs_of_that_model_and_data():
    from bsq_explore.catalog import epoch_seconds

    table = list_runs(EXAMPLES)
    fashion = [load_run(EXAMPLES / n).metrics.seconds for n in table[table.sweep == "fashion"].name]
    assert epoch_seconds(EXAMPLES, "lenet5", "fashion-mnist") == pytest.approx(pd.concat(fashion).median())
    assert epoch_seconds(EXAMPLES, "lenet5", "mnist") is None  # no shipped run of it


def test_what_if_scores_the_same_from_visitors_at_once():
    from concurrent.futures import ThreadPoolExecutor

    from bsq_explore.analysis import WhatIf

    run = load_run(EXAMPLES / "digits-a0.3")
    shared, alone = WhatIf(run), WhatIf(run)
    choices = [{"fc1": b, "fc2": c} for b in range(1, 5) for c in range(1, 3)]
    with ThreadPoolExecutor(4) as pool:  # the app shares one WhatIf between sessions: one model to load into
        together = list(pool.map(shared.evaluate, choices))
    assert together == [dict(alone.evaluate(c)) for c in choices]


def test_twins_pair_each_bsq_run_with_its_hessian_twin_at_the_same_size():
    from bsq_explore.analysis import twins, twins_sentence

    sweep = table(("f", "float", 32, 0.90), ("a1", "bsq", 2.0, 0.88), ("a2", "bsq", 1.5, 0.86), ("a3", "bsq", 3.0, 0.89),
                  ("h1", "hessian", 1.98, 0.87), ("h2", "hessian", 1.5, 0.864), ("u2", "uniform", 2, 0.85))
    sweep["alpha"] = [None, 0.1, 0.2, 0.05, 0.1, 0.2, None]  # a3 has no twin yet
    pairs = twins(sweep)
    assert pairs.alpha.tolist() == [0.1, 0.2] and pairs.bsq.tolist() == ["a1", "a2"]
    assert pairs.hessian.tolist() == ["h1", "h2"] and pairs.gain.tolist() == pytest.approx([1.0, -0.4])
    assert twins_sentence(pairs) == ("At the same size, BSQ is more accurate than the Hessian-chosen bits in 1 of 2 "
                                     "pairs; BSQ minus Hessian is +0.3 points on average.")
    assert twins_sentence(twins(sweep[sweep.kind != "hessian"])) == ""


def test_featured_takes_one_sweeps_table_as_well_as_a_listing():
    from bsq_explore.analysis import featured

    listing = list_runs(EXAMPLES)
    assert featured(sweep_table(listing, "fashion")) == featured(listing[listing.sweep == "fashion"])


def test_what_if_on_every_test_image_gives_the_runs_own_score_with_quantized_activations():
    from bsq_explore.analysis import WhatIf
    from bsq_explore.paths import SHARED_CIFAR10

    table = list_runs(EXAMPLES)
    done = table[(table.sweep == "cifar10") & (table.kind == "bsq") & (table.status == "finished")]
    if done.empty or not SHARED_CIFAR10.is_dir():
        pytest.skip("needs a finished cifar10 BSQ run and the CIFAR-10 images beside the checkout")
    run = load_run(EXAMPLES / done.name.iloc[0])  # 4-bit activations: a score depends on its batches
    assert run.config.act_bits == 4
    assert WhatIf(run, images=0).trained["test_acc"] == pytest.approx(run.summary["test_acc"], abs=1e-9)


def test_the_verdict_sentence_says_when_no_bsq_run_has_finished_yet():
    sweep = table(("f", "float", 32, 0.90), ("a1", "bsq", 2.0, 0.88, "running"), ("u2", "uniform", 2, 0.85))
    assert verdict_sentence(sweep) == "This sweep has no finished BSQ run yet to compare with its uniform baselines."


def test_what_if_reruns_only_the_steps_from_the_first_changed_layer_and_scores_as_evaluate_does():
    from collections import Counter

    from bsq_explore.analysis import WhatIf, reduce_precision
    from bsq_explore.export import load_quantized
    from bsq_explore.models import build_model
    from bsq_explore.paths import SHARED_CIFAR10
    from bsq_explore.train import evaluate

    table = list_runs(EXAMPLES)
    done = table[(table.sweep == "cifar10") & (table.kind == "bsq") & (table.status == "finished")]
    if done.empty or not SHARED_CIFAR10.is_dir():
        pytest.skip("needs a finished cifar10 BSQ run and the CIFAR-10 images beside the checkout")
    run = load_run(EXAMPLES / done.name.iloc[0])
    what_if = WhatIf(run)
    what_if.trained  # the page's first draw: every step runs
    ran = Counter()
    for name in ("conv1", "layer2.0", "fc"):  # the stem, a block of the middle stage, the head
        what_if.model.get_submodule(name).register_forward_hook(lambda *_, name=name: ran.update([name]))
    bits = what_if.bits

    def lower(*layers):
        return {layer: bits[layer] - 1 for layer in layers}
    last = [n for n in bits if n.startswith("layer3") and bits[n] > 1][-1]
    moves = [(lower(last), {"fc"}),  # a last-stage layer: the earlier steps' inputs are kept
             (lower(last, "layer2.0.conv1"), {"layer2.0", "fc"}),
             (lower(last, "layer2.0.conv1", "conv1"), {"conv1", "layer2.0", "fc"}),
             (lower(last, "layer2.0.conv2"), {"conv1", "layer2.0", "fc"})]  # conv1 back: from the stem again
    for choice, expected in moves:
        ran.clear()
        score = what_if.evaluate(choice)["test_acc"]
        assert set(ran) == expected and max(ran.values()) == 1
        fresh = load_quantized(build_model(run.config, what_if.data), reduce_precision(what_if.exported, choice))
        with torch.autocast("cpu", what_if.dtype, enabled=what_if.dtype != torch.float32):
            assert score == evaluate(fresh, what_if.data.test_x, what_if.data.test_y)
