"""Bootstrap intervals and paired verdicts (:mod:`molbridge.core.stats`): checked against distributions enumerated
exactly, then through ``bench compare --aggregate`` over a synthetic MLflow store with ranks and answers artifacts.
"""

import csv
import io
import itertools
import json
from collections import Counter
from fractions import Fraction
from math import factorial, prod

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from mlflow import MlflowClient
from mlflow.entities import Metric

from molbridge.core import plots, stats
from molbridge.core.cli import main
from molbridge.core.compare import Group, Items, RunRow, compare_groups, estimate_of, intervals

MANY = 100_000  # resamples for the exact checks: a tail share's Monte Carlo sd is then at most 0.0005
MARGIN = 0.003  # so an exact distribution with no step within 6 sd of a quantile's level pins the estimate


def exact_quantile(distribution: Counter, level: float) -> Fraction:
    """The level-quantile of an exactly enumerated distribution ({value: weight}), which a percentile bootstrap
    with many resamples converges to: the smallest value whose CDF reaches ``level``. Asserts that the CDF has
    no step within MARGIN of ``level``, so that sampling noise cannot move the estimate to a neighbour."""
    total = sum(distribution.values())
    below = Fraction(0)
    for value in sorted(distribution):
        at = below + Fraction(distribution[value], total)
        if at >= level:
            assert below < level - MARGIN and at > level + MARGIN, f"a CDF step too close to {level}"
            return value
        below = at
    raise AssertionError("unreachable")


def enumerate_means(values: list[int]) -> Counter:
    """Every one of the n^n equally likely resamples of ``values``: {mean: count}."""
    n = len(values)
    return Counter(Fraction(sum(values[i] for i in draw), n) for draw in itertools.product(range(n), repeat=n))


# --- one run: the bootstrap of a mean -----------------------------------------------------------------------


def test_bootstrap_matches_the_exact_distribution_worked_by_hand():
    """Items 0, 1, 3, 10: 4^4 = 256 equally likely resamples. By hand: a resample's mean is at most 0.25 only
    for 0000 (1 way) and 0001 (4 ways): 5/256 = 0.0195 < 0.025; with 0011 (6 ways, mean 0.5) 11/256 = 0.043, so
    the 2.5% quantile is 0.5. At the top, sum >= 33 (10,10,10,10 and 10,10,10,3: 5 ways) is 5/256 < 0.025 and
    sum >= 31 (with 10,10,10,1: 4 more) is 9/256 > 0.025, so the 97.5% quantile is 31/4 = 7.75."""
    values = [0, 1, 3, 10]
    exact = enumerate_means(values)
    # the same distribution from the 35 compositions (how often each item is drawn) with multinomial weights
    weighted = Counter()
    for counts in itertools.product(range(5), repeat=4):
        if sum(counts) == 4:
            ways = factorial(4) // prod(factorial(c) for c in counts)
            weighted[Fraction(sum(c * v for c, v in zip(counts, values, strict=True)), 4)] += ways
    assert weighted == exact and sum(exact.values()) == 256
    assert exact_quantile(exact, 0.025) == Fraction(1, 2) and exact_quantile(exact, 0.975) == Fraction(31, 4)

    interval = stats.bootstrap(values, resamples=MANY)
    assert (interval.estimate, interval.lo, interval.hi, interval.resamples) == (3.5, 0.5, 7.75, MANY)
    for level in (0.5, 0.8):  # other quantiles of the same distribution
        tail = (1 - level) / 2
        got = stats.bootstrap(values, resamples=MANY, level=level)
        assert (got.lo, got.hi) == (float(exact_quantile(exact, tail)), float(exact_quantile(exact, 1 - tail)))


def test_the_bootstrap_of_a_median_matches_its_exact_distribution():
    values = [0, 1, 3, 10, 4]
    exact = Counter(
        Fraction(int(2 * np.median([values[i] for i in d])), 2) for d in itertools.product(range(5), repeat=5)
    )
    got = stats.bootstrap(values, statistic="median", resamples=MANY, level=0.8)
    assert (got.lo, got.hi) == (float(exact_quantile(exact, 0.1)), float(exact_quantile(exact, 0.9)))
    assert got.estimate == 3.0


def test_bootstrap_is_deterministic_and_leaves_out_items_without_a_value():
    values = np.random.default_rng(3).normal(size=30)
    assert stats.bootstrap(values) == stats.bootstrap(values.copy())  # a fixed generator seed: same numbers
    assert stats.bootstrap(values, seed=1) != stats.bootstrap(values)
    with_gap = stats.bootstrap([1.0, np.nan, 3.0])
    assert with_gap.estimate == 2.0 and 1.0 <= with_gap.lo < with_gap.hi <= 3.0
    assert with_gap.resamples < stats.RESAMPLES  # the draws of only the missing item (1 in 27) give no mean
    with pytest.raises(ValueError, match="without a single item value"):
        stats.bootstrap([np.nan, np.nan])


# --- a configuration: seeds and items ------------------------------------------------------------------------


def test_two_level_bootstrap_draws_seeds_and_one_shared_item_resample_worked_by_hand():
    """Seeds A = (1, 0), B = (1, 1) on two items. Seed draws AA, AB, BA, BB and item draws 00, 01, 10, 11 are
    equally likely (16 outcomes). Items 00: everything is 1. Items 11: A gives 0, B 1, so AA 0, AB/BA 0.5, BB 1.
    Items 01/10: A gives 0.5, B 1, so AA 0.5, AB/BA 0.75, BB 1. Hence P(0) = 1/16, P(0.5) = 4/16, P(0.75) = 4/16,
    P(1) = 7/16: the 25% quantile is 0.5 (CDF 5/16), the 75% quantile 1 (CDF at 0.75 is 9/16)."""
    estimate = stats.configuration([[1, 0], [1, 1]], resamples=MANY, level=0.5)
    assert (estimate.estimate, estimate.interval.lo, estimate.interval.hi) == (0.75, 0.5, 1.0)
    assert (estimate.items, estimate.seeds) == (2, 2)


def test_two_level_bootstrap_matches_exact_enumeration_and_not_the_nested_design():
    runs = [[1, 0, 2], [1, 1, 4]]
    crossed, nested = Counter(), Counter()
    for seeds in itertools.product(range(2), repeat=2):
        for draw in itertools.product(range(3), repeat=3):
            crossed[sum(Fraction(sum(runs[s][i] for i in draw), 3) for s in seeds) / 2] += 1
        for first, second in itertools.product(itertools.product(range(3), repeat=3), repeat=2):
            means = [Fraction(sum(runs[s][i] for i in d), 3) for s, d in zip(seeds, (first, second), strict=True)]
            nested[sum(means) / 2] += 1
    got = stats.configuration(runs, resamples=MANY)
    assert got.estimate == 1.5
    assert (got.interval.lo, got.interval.hi) == (float(exact_quantile(crossed, 0.025)), 3.0)
    assert exact_quantile(nested, 0.025) != exact_quantile(crossed, 0.025)  # the test tells the designs apart
    items_only = Counter()  # both seeds kept, items resampled
    for draw in itertools.product(range(3), repeat=3):
        items_only[sum(Fraction(sum(run[i] for i in draw), 3) for run in runs) / 2] += 1
    assert got.over_items.lo == float(exact_quantile(items_only, 0.025))
    assert (got.over_seeds.lo, got.over_seeds.hi) == (1.0, 2.0)  # the two seeds' means; items kept


# --- paired comparisons ------------------------------------------------------------------------------------


def test_a_configuration_better_on_every_item_is_better():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 10, size=(1, 50))
    candidate = reference + rng.uniform(0.01, 0.1, size=reference.shape)
    up = stats.paired(candidate, reference, higher=True)
    assert up.verdict == "better" and 0.01 < up.difference.lo < up.difference.hi < 0.1
    assert stats.paired(candidate, reference, higher=False).verdict == "worse"  # e.g. an MAE
    assert stats.paired(reference, candidate, higher=True).verdict == "worse"
    assert stats.paired(candidate, reference, higher=None).verdict == "higher"  # direction unknown
    # the same difference is invisible to two separate intervals: the items' spread dwarfs it
    ours, theirs = stats.bootstrap(candidate[0]), stats.bootstrap(reference[0])
    assert ours.lo < theirs.hi and theirs.lo < ours.hi


def test_identical_configurations_are_not_distinguishable_with_an_interval_of_zero():
    runs = np.random.default_rng(1).integers(0, 2, size=(3, 40)).astype(float)
    same = stats.paired(runs, runs.copy(), higher=True, pair_seeds=True)
    assert (same.difference.estimate, same.difference.lo, same.difference.hi) == (0.0, 0.0, 0.0)
    assert same.verdict == "not distinguishable" and same.seeds == "paired by seed"


def test_noise_is_not_distinguishable_and_seeds_pool_when_unpaired():
    rng = np.random.default_rng(2)
    reference = (rng.random((2, 200)) < 0.3).astype(float)
    candidate = (rng.random((3, 200)) < 0.3).astype(float)
    noisy = stats.paired(candidate, reference, higher=True)
    assert noisy.verdict == "not distinguishable" and noisy.seeds == "pooled"
    assert noisy.difference.lo < 0 < noisy.difference.hi and noisy.difference.hi - noisy.difference.lo < 0.2
    assert noisy.difference.estimate == pytest.approx(candidate.mean() - reference.mean())
    with pytest.raises(ValueError, match="items must be the same"):
        stats.paired(candidate[:, :10], reference, higher=True)


def test_the_direction_of_a_metric_comes_from_its_last_name_part():
    higher = ["test/full_m2t_acc", "test/full_t2m_r20", "test/bleu4", "test/rougeL", "test/meteor", "test/skill"]
    higher += ["test/LogP/valid_rate", "test/baseline_full_m2t_acc", "test/shape_acc"]
    lower = ["test/LogP/mae", "test/HOMO _GFN2-xTB_/medae", "test/rg_mae", "train/loss", "test/LogP/mae_in_range"]
    assert all(stats.higher_is_better(m) is True for m in higher)
    assert all(stats.higher_is_better(m) is False for m in lower)
    assert stats.higher_is_better("test/n_tokens") is None


# --- items matched by id -------------------------------------------------------------------------------------


def _group(config: str, values: dict[str, list[float]], ids=None, statistic="mean") -> tuple[Group, dict]:
    runs, items = [], {}
    for seed, series in values.items():
        run = RunRow(f"{config}-s{seed}", f"{config}-{seed}", "exp", "FINISHED", 0, {"seed": seed})
        run.metrics["test/x_acc"] = float(np.mean(series)) if statistic == "mean" else float(np.median(series))
        items[run.run_id] = {"test/x_acc": Items(tuple(ids or map(str, range(len(series)))), np.array(series))}
        runs.append(run)
    return Group("exp", config, runs, config), items


def test_items_are_matched_by_id_and_different_item_lists_are_refused():
    from molbridge.core.errors import MolbridgeError

    a, items_a = _group("a", {"0": [1.0, 0.0, 0.0, 1.0]}, ids=["m1", "m2", "m3", "m4"])
    b, items_b = _group("b", {"0": [1.0, 1.0, 0.0, 0.0]}, ids=["m4", "m1", "m3", "m2"])  # a's items, shuffled
    items = items_a | items_b
    same = compare_groups(b, a, "test/x_acc", items)
    assert same.difference.estimate == 0.0 and (same.difference.lo, same.difference.hi) == (0.0, 0.0)
    c, items_c = _group("c", {"0": [1.0, 1.0, 0.0, 0.0]}, ids=["m1", "m2", "m3", "m9"])
    with pytest.raises(MolbridgeError, match=r"runs c-s0 \(c-0\) and a-s0 \(a-0\) were scored on different items"):
        compare_groups(c, a, "test/x_acc", items | items_c)


def test_a_run_whose_items_do_not_give_its_logged_value_gets_no_interval():
    group, items = _group("a", {"0": [1.0, 0.0], "1": [1.0, 1.0]})
    group.runs[1].metrics["test/x_acc"] = 0.25
    notes = []
    assert estimate_of(group, "test/x_acc", items, notes=notes) is None
    assert "a-s1 gives 1, the run logged 0.25" in notes[0]
    del items[group.runs[0].run_id]["test/x_acc"]
    table = intervals([group], items)
    assert not table.estimates and "a-s0 logged no per-item values" in table.notes[0]


# --- bench compare --aggregate over a synthetic store -------------------------------------------------------

RETRIEVAL, QA, MISMATCH = "retrieval-molbridge-mini", "qa-molbridge-mini", "retrieval-other"
N = 40
IDS = [f"mol{i}" for i in range(N)]


def _model_ranks(config: str, seed: int) -> dict[str, list[int]]:
    """schnet-linear (the reference, first in the table): 10 of 40 molecules first; smiles-linear: 30;
    unimol-qformer: exactly schnet-linear's ranks, seed by seed."""
    first = {"schnet-linear-none": (0,), "unimol-qformer-none": (0,), "smiles-linear-none": (0, 1, 2)}[config]
    m2t = [0 if i % 4 in first else 5 + (i * 7 + seed) % 30 for i in range(N)]
    t2m = [0 if (i + seed) % 4 in first else 3 + i % 25 for i in range(N)]
    return {"m2t": m2t, "t2m": t2m}


BASELINE = {"m2t": [0 if i % 10 == 0 else 30 for i in range(N)], "t2m": [0 if i % 8 == 0 else 25 for i in range(N)]}


def _rank_metrics(model: dict, baseline: dict) -> list[tuple[str, float]]:
    out = []
    for who, ranks in (("", model), ("baseline_", baseline)):
        for d in ("m2t", "t2m"):
            r = np.array(ranks[d])
            out += [
                (f"test/{who}full_{d}_acc", float((r == 0).mean())),
                (f"test/{who}full_{d}_r20", float((r < 20).mean())),
            ]
    return out


def _log(client, experiment, name, tags, metrics, artifacts, folder):
    run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics])
    for file_name, text in artifacts:
        path = folder / run_id / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def _tags(task, config, seed):
    encoder, projector, llm = config.split("-")
    return {"task": task, "dataset": "molbridge-mini", "encoder": encoder, "projector": projector, "llm": llm}, {
        "seed": str(seed)
    }


# (configuration, seed) -> LogP answers for the targets 1.0, 2.0, 3.0, 4.0, 5.0, 6.0 (None: no number)
LOGP_TARGETS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
LOGP_ANSWERS = {
    "schnet-linear-vicuna": [1.1, 2.2, 2.9, 4.1, None, 6.05],  # close
    "unimol-qformer-vicuna": [2.0, 3.5, 1.0, 6.0, 3.0, None],  # far off on every item
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-stats")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    retrieval = client.create_experiment(RETRIEVAL, artifact_location=str(root / "artifacts-r"))
    ranks = {}
    for config in ("schnet-linear-none", "smiles-linear-none", "unimol-qformer-none"):
        for seed in (0, 1):
            model = ranks[config, seed] = _model_ranks(config, seed)
            content = {"split": "test", "ids": IDS, "model": model, "baseline": BASELINE}
            identity, seed_tag = _tags("retrieval", config, seed)
            _log(
                client,
                retrieval,
                f"{config}-s{seed}",
                identity | seed_tag,
                [*_rank_metrics(model, BASELINE), ("best/valid/full_acc", 0.1 + seed)],
                [("ranks-test.json", json.dumps(content))],
                root,
            )
    qa = client.create_experiment(QA, artifact_location=str(root / "artifacts-q"))
    for config, answers in LOGP_ANSWERS.items():
        records = [
            {"id": f"mol{i}", "smiles": "C", "task": "LogP", "instruction": "?", "reference": f"{t}", "answer": f"{a}"}
            | {"value": a, "target": t}
            for i, (t, a) in enumerate(zip(LOGP_TARGETS, answers, strict=True))
        ]
        errors = [abs(a - t) for t, a in zip(LOGP_TARGETS, answers, strict=True) if a is not None]
        metrics = [("test/LogP/mae", float(np.mean(errors))), ("test/LogP/medae", float(np.median(errors)))]
        metrics += [("test/LogP/valid_rate", len(errors) / len(answers)), ("test/skill", 0.5)]
        identity, seed_tag = _tags("qa", config, 0)
        _log(
            client,
            qa,
            f"{config}-s0",
            identity | seed_tag,
            metrics,
            [("answers-test.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")],
            root,
        )
    other = client.create_experiment(MISMATCH, artifact_location=str(root / "artifacts-o"))
    for config, ids in (("schnet-linear-none", IDS), ("unimol-qformer-none", [*IDS[:-1], "mol99"])):
        model = _model_ranks(config, 0)
        identity, seed_tag = _tags("retrieval", config, 0)
        content = {"split": "test", "ids": ids, "model": model}
        metrics = [m for m in _rank_metrics(model, BASELINE) if "baseline" not in m[0]]
        _log(
            client,
            other,
            f"{config}-s0",
            identity | seed_tag,
            metrics,
            [("ranks-test.json", json.dumps(content))],
            root,
        )
    return {"uri": uri, "ranks": ranks, "root": root}


def _aggregate(store, capsys, *args):
    assert main(["compare", "--uri", store["uri"], "--aggregate", *args]) == 0
    return capsys.readouterr()


def test_aggregate_markdown_shows_intervals_and_paired_verdicts(store, capsys):
    printed = _aggregate(store, capsys, "--experiment", RETRIEVAL)
    lines = printed.out.splitlines()
    header = lines[0]
    assert "| test/full_m2t_acc vs schnet-linear-none |" in header
    assert "baseline_full_m2t_acc vs" not in header  # a baseline is the same for every configuration
    assert "best/valid/full_acc vs" not in header  # no per-item values
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:5]}
    verdicts = header.split(" | ").index("test/full_m2t_acc vs schnet-linear-none")
    cells = {name: row.split(" | ") for name, row in rows.items()}
    assert cells["schnet-linear-none"][verdicts] == "reference"
    assert cells["smiles-linear-none"][verdicts].startswith("better (+0.5 [")
    assert cells["unimol-qformer-none"][verdicts] == "not distinguishable (+0 [0, 0])"
    m2t = header.split(" | ").index("test/full_m2t_acc")
    assert cells["schnet-linear-none"][m2t].startswith("0.25 ± 0 [")  # both seeds: 10 of 40 first
    assert "[" not in cells["schnet-linear-none"][header.split(" | ").index("best/valid/full_acc")]
    legend = printed.out.split("\n\n", 1)[1]
    assert "95% percentile bootstrap interval of the metric over test items and seeds" in legend
    assert "2000 resamples, seed 0" in legend and "No interval (no per-item values in the runs' artifacts)" in legend
    assert "best/valid/full_acc" in legend.splitlines()[-1] and printed.err == ""


def test_aggregate_csv_intervals_are_the_module_s_on_the_runs_ranks(store, capsys):
    table = list(
        csv.DictReader(io.StringIO(_aggregate(store, capsys, "--experiment", RETRIEVAL, "--format", "csv").out))
    )
    by_config = {row["configuration"]: row for row in table}
    for config, row in by_config.items():
        hits = [[float(r == 0) for r in store["ranks"][config, seed]["t2m"]] for seed in (0, 1)]
        expected = stats.configuration(hits)
        assert (float(row["test/full_t2m_acc lo"]), float(row["test/full_t2m_acc hi"])) == (
            expected.interval.lo,
            expected.interval.hi,
        )
        assert (
            float(row["test/full_t2m_acc lo"])
            <= float(row["test/full_t2m_acc mean"])
            <= float(row["test/full_t2m_acc hi"])
        )
        assert row["reference"] == "schnet-linear-none" and row["best/valid/full_acc lo"] == ""
    smiles = by_config["smiles-linear-none"]
    reference = [[float(r == 0) for r in store["ranks"]["schnet-linear-none", s]["m2t"]] for s in (0, 1)]
    candidate = [[float(r == 0) for r in store["ranks"]["smiles-linear-none", s]["m2t"]] for s in (0, 1)]
    paired = stats.paired(candidate, reference, higher=True, pair_seeds=True)
    assert smiles["test/full_m2t_acc verdict"] == "better"
    assert float(smiles["test/full_m2t_acc difference lo"]) == paired.difference.lo
    assert float(smiles["test/full_m2t_acc difference"]) == pytest.approx(0.5)
    assert by_config["schnet-linear-none"]["test/full_m2t_acc verdict"] == ""  # the reference itself


def test_aggregate_json_and_versus(store, capsys):
    records = json.loads(
        _aggregate(store, capsys, "--experiment", RETRIEVAL, "--format", "json", "--versus", "smiles-*").out
    )
    schnet = next(r for r in records if r["configuration"] == "schnet-linear-none")
    assert schnet["reference"] == "smiles-linear-none"
    assert schnet["bootstrap"] == {"level": 0.95, "resamples": 2000, "seed": 0, "method": "percentile"}
    m2t = schnet["metrics"]["test/full_m2t_acc"]
    assert m2t["items"] == N and m2t["ci"][0] <= m2t["mean"] <= m2t["ci"][1]
    assert set(m2t) >= {"ci_over_items", "ci_over_seeds"}
    assert m2t["versus"]["verdict"] == "worse" and m2t["versus"]["seeds"] == "paired by seed"
    assert m2t["versus"]["difference"] == pytest.approx(-0.5)
    assert schnet["metrics"]["best/valid/full_acc"]["ci"] is None


def test_qa_errors_are_compared_lower_is_better(store, capsys):
    out = _aggregate(store, capsys, "--experiment", QA, "--versus", "unimol-qformer-vicuna").out
    header, _, schnet, *_ = out.splitlines()
    columns = header.split(" | ")
    cells = schnet.split(" | ")
    assert cells[columns.index("test/LogP/mae vs unimol-qformer-vicuna")].startswith("better (-")
    assert cells[columns.index("test/LogP/medae vs unimol-qformer-vicuna")].startswith("better (-")
    mae = cells[columns.index("test/LogP/mae")]
    assert mae.startswith("0.11 [") and "No interval (no per-item values in the runs' artifacts): test/skill." in out


def test_runs_scored_on_different_items_are_refused_naming_them(store, capsys):
    assert main(["compare", "--uri", store["uri"], "--aggregate", "--experiment", MISMATCH]) == 2
    err = capsys.readouterr().err
    assert "runs unimol-qformer-none-s0" in err and "schnet-linear-none-s0" in err
    assert "mol99 only in the first" in err and "mol39 only in the second" in err


def test_versus_and_resamples_are_checked(store, capsys):
    assert main(["compare", "--uri", store["uri"], "--experiment", RETRIEVAL, "--versus", "x"]) == 2
    assert "go with --aggregate" in capsys.readouterr().err
    assert main(["compare", "--uri", store["uri"], "--experiment", RETRIEVAL, "--aggregate", "--versus", "egnn"]) == 2
    assert "no configuration of the table is called that" in capsys.readouterr().err
    fewer = _aggregate(store, capsys, "--experiment", RETRIEVAL, "--resamples", "200").out
    assert "200 resamples" in fewer


def test_plots_draw_interval_whiskers_and_say_so(store, tmp_path, capsys):
    out = tmp_path / "plots"
    args = ["compare", "--uri", store["uri"], "--experiment", RETRIEVAL, "--plots", str(out), "--no-log"]
    assert main([*args, "--plot-metrics", "test/full_m2t_acc", "best/valid/full_acc"]) == 0
    index = (out / "README.md").read_text()
    acc = index.split("### bars-test_full_m2t_acc.png", 1)[1].split("###", 1)[0]
    assert "error bar = 95% percentile bootstrap interval over test items and seeds (2000 resamples)" in acc
    best = index.split("### bars-best_valid_full_acc.png", 1)[1].split("###", 1)[0]
    assert "error bar = sample std over seeds (no per-item values for an interval)" in best
    aggregate = (out / "aggregate.md").read_text()
    assert "vs schnet-linear-none" in aggregate and "[lo, hi]" in aggregate
    assert "test/full_m2t_acc lo" in (out / "aggregate.csv").read_text().splitlines()[0]


def test_bars_take_interval_whiskers_where_given_and_std_elsewhere():
    values = {"a": [("0", 0.4), ("1", 0.6)], "b": [("0", 0.2), ("1", 0.4)]}
    fig = plots.metric_bars(values, "test/x", "caption", intervals={"a": (0.3, 0.8)})
    (ax,) = fig.axes
    whiskers = [c for c in ax.collections if isinstance(c, LineCollection)]
    (a_segment,), (b_segment,) = (w.get_segments() for w in whiskers)
    assert np.allclose(a_segment[:, 1], [0.3, 0.8])  # asymmetric: the interval, not mean ± something
    assert np.allclose(b_segment[:, 1], [0.3 - np.std([0.2, 0.4], ddof=1), 0.3 + np.std([0.2, 0.4], ddof=1)])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "mean, interval (see caption)" in labels and "mean ± sample std" in labels
