"""benchmarks/scale.py at 3,000 images, so the script cannot rot (no timing assertions).

The dsaudit commands run in this process through Typer's CliRunner instead of one interpreter
each: the script's own subprocess timer is `benchmarks/_common.py`'s, shared with ingest.py.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
N = 3_000


@pytest.fixture(scope="module")
def scale() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        module = importlib.import_module("scale")
        common = importlib.import_module("_common")

        def in_process(*args: str) -> object:
            started = time.perf_counter()
            result = CliRunner().invoke(app, list(args))
            assert result.exit_code == 0, result.output
            return common.Process(time.perf_counter() - started, 0.0, result.stdout)

        patch.setattr(module, "dsaudit", in_process)
        yield module


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scale")


def _arrays(version: Path) -> dict[str, np.ndarray]:
    return {path.name: np.load(path) for path in sorted(version.glob("*.npy"))}


def test_generated_data_is_deterministic_notmnist_shaped_and_planted(
    scale: ModuleType, workdir: Path, tmp_path: Path
) -> None:
    made = scale.generate(N, workdir / f"n{N}")
    assert made["sizes"] == {"train": 2_700, "valid": 150, "test": 150}
    assert made["planted"]["test"] == {"blank": 1, "faint": 1, "exact": 2, "near": 2}
    assert made["planted"]["train"]["exact"] == 14  # 0.5 % of train
    v1 = _arrays(workdir / f"n{N}" / "v1")
    again = scale.generate(N, tmp_path / "again")
    assert again["seconds"] > 0
    assert scale.generate(N, tmp_path / "again")["seconds"] == 0  # reused, not made again
    for name, array in _arrays(tmp_path / "again" / "v1").items():
        np.testing.assert_array_equal(array, v1[name])
    train = v1["train_x.npy"]
    assert train.dtype == np.float32 and train.shape == (2_700, 28, 28)
    assert train.min() >= -0.5 and train.max() <= 0.5
    assert set(np.unique(v1["train_y.npy"])) <= set(range(10))
    # Blank rows are all -0.5; exact copies of train rows sit in test.
    assert (v1["test_x.npy"] == -0.5).all(axis=(1, 2)).sum() >= 1
    test_rows = {row.tobytes() for row in v1["test_x.npy"]}
    assert sum(row.tobytes() in test_rows for row in train) >= 2
    # v2 replaces 5 % of each split's rows and leaves the rest byte for byte.
    v2 = _arrays(workdir / f"n{N}" / "v2")
    for split, rows in made["sizes"].items():
        changed = (v2[f"{split}_x.npy"] != v1[f"{split}_x.npy"]).any(axis=(1, 2)).sum()
        assert changed == round(rows * 0.05)


@pytest.fixture(scope="module")
def measured(scale: ModuleType, workdir: Path) -> dict:
    return scale.measure(N, workdir, runs=1, sample=150, loop_sample=20)


def test_measure_reads_recall_from_the_catalog_and_writes_table_and_plot(
    scale: ModuleType, workdir: Path, measured: dict
) -> None:
    result = measured
    times = result["times"]
    for key in (
        "ingest",
        "overlap",
        "overlap computed",
        "report",
        "incremental",
        "loop",
        "np.unique",
        "brute force",
    ):
        assert len(times[key]) == 1 and times[key][0] > 0, key
    assert set(result["near"]) == {"pixel-v1", "phash256-v2"}
    recall = result["recall"]
    planted = result["planted"]["test"]
    assert recall["sample"] == 150  # all of test
    assert recall["exact_pairs"] >= planted["exact"]
    assert recall["truth"] >= planted["near"]
    assert recall["recall"] >= 0.5  # all pairs within 0.08, most far closer to it than edits
    assert recall["close_truth"] >= planted["near"]  # the planted edits are within 0.05
    assert recall["close_found"] >= 0.9 * recall["close_truth"]
    # Stored within the threshold but not found by the brute force: only pairs the 8-bit
    # rounding moved across it (at most 1/255).
    assert recall["extra"] <= 1

    text = scale.table([result])
    assert "| `dsaudit ingest` v1 (exact + near, fresh catalog) | " in text
    assert f"| pixel-v1 recall vs the brute force (sample) | {recall['recall']:.3f}" in text
    assert "x ingest)" in text
    png = workdir / "scale.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert scale.plot([result], png) is False
    else:
        assert scale.plot([result], png) is True
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sizes_parse_with_suffixes(scale: ModuleType) -> None:
    assert [scale.parse_size(s) for s in ("125k", "1M", "3000", "0.5M")] == [
        125_000,
        1_000_000,
        3_000,
        500_000,
    ]


def test_main_quick_writes_table_json_and_plot_into_the_workdir(
    scale: ModuleType, measured: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []

    def fake_measure(n: int, workdir: Path, **options: int) -> dict:
        asked.append((n, options))
        return measured | {"n": n}

    monkeypatch.setattr(scale, "measure", fake_measure)
    out = tmp_path / "table.md"
    assert scale.main(["--quick", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    assert asked == [
        (20_000, {"runs": 1, "sample": 500, "loop_sample": 50, "seed": 0}),
        (40_000, {"runs": 1, "sample": 500, "loop_sample": 50, "seed": 0}),
    ]
    assert "| measure | 20,000 images | 40,000 images |" in out.read_text()
    assert "--quick" in out.read_text()  # the command that made it
    assert [r["n"] for r in json.loads((tmp_path / "scale.json").read_text())] == [20_000, 40_000]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "scale-quick.png").exists()  # --quick leaves benchmarks/ alone


def test_bad_sizes_are_usage_errors(scale: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        scale.main(["--sizes", "12x"])
    assert stop.value.code == 2
    assert "size '12x' is not a number like 125k or 1M" in capsys.readouterr().err


# --- benchmarks/recall_bound.py -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bound(scale: ModuleType) -> ModuleType:
    return importlib.import_module("recall_bound")


def test_p_stable_collision_probability_matches_a_simulation(bound: ModuleType) -> None:
    # Two points at distance c project to s and s + c * Z (Z standard normal) on a line cut
    # into buckets of width w at a uniform random offset: they share a bucket iff both land in
    # the same one.
    rng = np.random.default_rng(7)
    start = rng.uniform(0.0, 1.0, 400_000)
    step = rng.standard_normal(400_000)
    for w in (1.0, 4.0):
        for c in (0.25, 1.0, 2.0, 4.0):
            simulated = np.mean(np.floor(start + c * step / w) == 0)
            assert abs(bound.collision_probability(c, w) - simulated) < 0.004, (w, c)
    assert bound.collision_probability(0.0, 4.0) == 1.0
    assert np.all(np.diff(bound.collision_probability(np.linspace(0.01, 3, 50), 4.0)) < 0)


def test_brute_force_density_counts_every_pair_and_leaves_the_pairs_alone(
    scale: ModuleType, workdir: Path
) -> None:
    scale.generate(N, workdir / f"n{N}")
    version = workdir / f"n{N}" / "v1"
    plain = scale.brute_force(version, 150, 0)
    counted = scale.brute_force(version, 150, 0, density=(1.0, 2000))
    assert plain.density is None
    assert counted.pairs == plain.pairs
    assert counted.density is not None and counted.density.shape == (2000,)
    unit = {
        split: np.load(version / f"{split}_x.npy").reshape(-1, scale.PIXELS) + 0.5
        for split in ("train", "valid", "test")
    }
    kept = sum(int((~scale.is_low_info(unit[s])).sum()) for s in ("train", "valid"))
    queries = int((~scale.is_low_info(unit["test"][counted.sample])).sum())
    assert counted.density.sum() == queries * kept  # every distance is in [0, 1]
    # Bins below the threshold hold at least the near pairs (and the exact copies, in bin 0).
    below = int(scale.THRESHOLD * 2000) - 1
    assert counted.density[:below].sum() <= len(plain.pairs) + plain.exact
    assert counted.density[: below + 2].sum() >= len(plain.pairs)


def _toy(bound: ModuleType) -> object:
    """Two near pairs (0.04 and 0.08) and 100 far ones (0.2), over 2 sample rows."""
    counts = np.zeros(2000, np.int64)
    counts[80], counts[160], counts[400] = 6, 10, 100  # bins starting at 0.04, 0.08, 0.2
    return bound.Density(np.array([0.04, 0.08]), counts, 2)


def _setting(bound: ModuleType, label: str, p_near: tuple[float, float], far: float) -> object:
    at_bins = np.zeros(2000)
    at_bins[80], at_bins[160], at_bins[400] = *p_near, far
    return bound.Setting("p-stable", label, at_bins, np.array(p_near))


def test_bound_arithmetic_on_a_density_worked_by_hand(bound: ModuleType) -> None:
    density = _toy(bound)
    assert density.per_row_within(0.08) == 3.0  # the bin starting at 0.08 is not below it
    assert density.per_row_within(0.0805) == 8.0
    assert density.per_row_within(1.0) == 58.0
    one = _setting(bound, "x", (0.9, 0.5), 0.1)
    recall, close, candidates = bound.evaluate(
        density, 3, np.stack([one.at_bins]), np.stack([one.at_near])
    )
    hit = [1 - 0.1**3, 1 - 0.5**3, 1 - 0.9**3]  # at 0.04, 0.08 and 0.2, with 3 bands
    assert recall[0] == pytest.approx((hit[0] + hit[1]) / 2)
    assert close[0] == pytest.approx(hit[0])  # only 0.04 is within CLOSE
    assert candidates[0] == pytest.approx((6 * hit[0] + 10 * hit[1] + 100 * hit[2]) / 2)

    searched = [
        _setting(bound, "all", (1.0, 1.0), 1.0),  # recall 1, 58 candidates per row
        _setting(bound, "good", (0.95, 0.95), 0.0),  # recall 0.95, 7.6
        _setting(bound, "half", (0.5, 0.5), 0.0),  # recall 0.5, 4.0
        _setting(bound, "skewed", (0.99, 0.2), 0.0),  # recall 0.595, 3.97
    ]
    cheapest, best = bound.solve(density, 0.08, 1, 0.9, [5.0, 10.0, 1.0], searched)
    assert [(j.setting, j.recall) for j in cheapest] == [("good", 0.95)]
    assert [(j.setting, budget) for j, budget in best] == [("skewed", 5.0), ("good", 10.0)]
    assert best[0][0].recall_close == pytest.approx(0.99)


def test_bound_solves_both_models_and_the_ideal_one_is_cheaper(
    bound: ModuleType, workdir: Path
) -> None:
    density = bound.measure(N, workdir, 150, 0)
    assert 140 <= density.rows < 150 and density.near.size >= 2  # the blank and faint rows out
    cheapest, best = bound.solve(density, 0.08, 24, 0.99, [10.0, 1e9])
    by_model = {join.model: join for join in cheapest}
    assert set(by_model) == {"p-stable", "ideal"}
    assert by_model["ideal"].candidates <= by_model["p-stable"].candidates
    # Candidates include the near pairs found: never fewer per row than recall * near / rows.
    for join in cheapest:
        assert join.candidates >= join.recall * density.near.size / density.rows
    assert {(join.model, budget) for join, budget in best} == {
        ("p-stable", 10.0),
        ("p-stable", 1e9),
        ("ideal", 10.0),
        ("ideal", 1e9),
    }
    for join, budget in best:
        assert join.candidates <= budget
        if budget == 1e9:
            assert join.recall > 0.999


def test_bound_main_writes_the_report(bound: ModuleType, workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bound.md"
    argv = ["--size", str(N), "--sample", "150", "--workdir", str(workdir), "--bands", "24"]
    assert bound.main([*argv, "--budgets", "20", "--out", str(out)]) == 0
    text = out.read_text()
    assert f"scale.py at {N:,} images" in text
    assert "| 24 | p-stable | w = " in text and "(cheapest with recall >= 0.99)" in text
    assert "| 24 | ideal | q = " in text and "(best recall within 20)" in text
    assert "| all but low-information | " in text
