"""The backtest CLI on tiny generated series, with a tiny detector registered here."""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors.base import AnomalyResult, Detector
from detectors.params import Param, ParamSchema
from detectors.registry import register
from tools import backtest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "nab"


@register
class TinyZScore(Detector):
    """Running mean/variance z-score, for backtest tests only."""

    name = "tiny_zscore_bt"
    params = ParamSchema(
        (
            Param("warmup", int, 5, "points before the first score", minimum=2),
            Param("k", float, 3.0, "band half-width in standard deviations", minimum=0.0, exclusive_minimum=True),
            Param("label", str, None, "unused; tests nullable values", nullable=True),
        )
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        result = AnomalyResult.warming_up()
        if self.n >= self.config["warmup"]:
            std = math.sqrt(self.m2 / (self.n - 1)) or 1e-9
            z = abs(value - self.mean) / std
            half = self.config["k"] * std
            result = AnomalyResult(self.mean - half, self.mean + half, 1.0 - math.exp(-z / 3), z > self.config["k"])
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)
        return result

    def _get_state(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        self.n, self.mean, self.m2 = int(state["n"]), float(state["mean"]), float(state["m2"])


NAME = TinyZScore.name
START = "2020-01-01 00:00:00"


def write_series(path: Path, n: int, spike_at: int | None = None, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = np.datetime64(START)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for i in range(n):
            value = 10.0 + rng.normal()
            if i == spike_at:
                value += 50.0
            ts = str(base + np.timedelta64(5 * i, "m")).replace("T", " ")
            w.writerow([ts, f"{value:.6f}"])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_series(root / "top.csv", 60, spike_at=40, seed=1)
    write_series(root / "group" / "a.csv", 80, spike_at=70, seed=2)
    write_series(root / "group" / "deeper" / "b.csv", 50, seed=3)
    (root / "notes.txt").write_text("not a series")
    return root


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def run(argv: list[str]) -> int:
    return backtest.main([str(a) for a in argv])


def test_output_layout_and_columns(data: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert run(["--data", data, "--out", out, "--detector", NAME, "--quiet"]) == 0
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert produced == ["group/a.csv", "group/deeper/b.csv", "top.csv"]
    rows = read_rows(out / "group" / "a.csv")
    assert tuple(rows[0]) == backtest.OUTPUT_COLUMNS
    source = read_rows(data / "group" / "a.csv")
    assert len(rows) == len(source) == 81
    assert [r[:2] for r in rows[1:]] == source[1:]  # timestamp and value text kept
    warm, scored = rows[1], rows[10]
    assert warm[2:] == ["0.0", "0", "", ""]
    assert float(scored[4]) < float(scored[5]) and 0.0 <= float(scored[2]) <= 1.0
    assert rows[1 + 70][3] == "1"  # the spike is flagged
    assert capsys.readouterr().out == ""  # no labels, no table


def test_incidents_beside_the_results(data: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert run(["--data", data, "--out", out, "--detector", NAME, "--quiet", "--incidents"]) == 0
    records = [json.loads(line) for line in (out / "group" / "a.csv.incidents.jsonl").read_text().splitlines()]
    flagged = [r for r in read_rows(out / "group" / "a.csv")[1:] if r[3] == "1"]
    assert flagged and records[0]["transition"] == "opened"
    assert records[0]["opened_at"] == flagged[0][0].replace(" ", "T") + ".000Z"
    assert records[0]["application"] == "group/a.csv" and records[0]["detector"] == NAME
    assert (out / "group" / "deeper" / "b.csv.incidents.jsonl").is_file()


def test_state_roundtrip_every_7_points_equals_no_roundtrip(data: Path, tmp_path: Path):
    a, b = tmp_path / "every7", tmp_path / "never"
    assert run(["--data", data, "--out", a, "--detector", NAME, "--state-roundtrip-every", 7, "--quiet"]) == 0
    assert run(["--data", data, "--out", b, "--detector", NAME, "--state-roundtrip-every", 0, "--quiet"]) == 0
    for path in a.rglob("*.csv"):
        assert path.read_bytes() == (b / path.relative_to(a)).read_bytes()


def test_roundtrip_really_goes_through_state(monkeypatch):
    calls = []
    original = backtest.detector_from_state

    def spy(name, params, blob):
        calls.append(len(blob))
        return original(name, params, blob)

    monkeypatch.setattr(backtest, "detector_from_state", spy)
    ts = np.arange(20, dtype=np.int64) * 1000
    backtest.run_detector(NAME, TinyZScore.params.validate({}), ts, np.ones(20), roundtrip_every=7)
    assert len(calls) == 2  # between chunks 0-6 | 7-13 | 14-19


def test_params_are_applied_and_parallel_run_matches_serial(data: Path, tmp_path: Path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    args = ["--data", data, "--detector", NAME, "--param", "warmup=20", "--param", "label=null", "--quiet"]
    assert run([*args, "--out", serial]) == 0
    assert run([*args, "--out", parallel, "--jobs", 2]) == 0
    rows = read_rows(serial / "top.csv")
    assert rows[20][4] == "" and rows[21][4] != ""  # 20 warm-up points
    for path in serial.rglob("*.csv"):
        assert path.read_bytes() == (parallel / path.relative_to(serial)).read_bytes()


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("warmup=1", "--param warmup: must be >= 2, got 1"),
        ("warmup=abc", "--param warmup: must be an integer"),
        ("windw=3", "--param windw: unknown parameter; allowed: warmup, k, label"),
        ("warmup", "expected key=value"),
    ],
)
def test_bad_param_names_the_field(data: Path, tmp_path: Path, capsys, param: str, message: str):
    with pytest.raises(SystemExit) as exc:
        run(["--data", data, "--out", tmp_path / "o", "--detector", NAME, "--param", param])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_detector_lists_available(data: Path, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        run(["--data", data, "--out", tmp_path / "o", "--detector", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown detector 'nope'" in err and NAME in err and "ema" in err


def test_missing_or_empty_data_dir(tmp_path: Path, capsys):
    assert run(["--data", tmp_path / "missing", "--out", tmp_path / "o", "--detector", NAME]) == 1
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(["--data", tmp_path / "empty", "--out", tmp_path / "o", "--detector", NAME]) == 1
    assert "no *.csv files found" in capsys.readouterr().err


def test_bad_csv_is_reported_with_file_and_line(tmp_path: Path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_text("timestamp,value\n2020-01-01 00:00:00,1.0\n2020-01-01 00:05:00,oops\n")
    (tmp_path / "d" / "y.csv").write_text("time,val\n1,2\n")
    assert run(["--data", tmp_path / "d", "--out", tmp_path / "o", "--detector", NAME, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 series failed" in err and "x.csv:3" in err and "missing column(s) timestamp, value" in err


def test_required_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        run(["--detector", NAME])
    assert exc.value.code == 2
    assert "--data, --out" in capsys.readouterr().err


def test_help_lists_detectors_and_their_params(capsys):
    with pytest.raises(SystemExit) as exc:
        run(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--state-roundtrip-every" in out and "--score-only" in out
    assert NAME in out
    assert "warmup (int, default 5, >= 2): points before the first score" in out


def test_unsorted_input_is_run_in_time_order(tmp_path: Path):
    (tmp_path / "d").mkdir()
    lines = [f"2020-01-01 00:{m:02d}:00,{v}" for m, v in [(10, 3.0), (0, 1.0), (5, 2.0)]]
    (tmp_path / "d" / "x.csv").write_text("timestamp,value\n" + "\n".join(lines) + "\n")
    assert run(["--data", tmp_path / "d", "--out", tmp_path / "o", "--detector", NAME, "--quiet"]) == 0
    rows = read_rows(tmp_path / "o" / "x.csv")
    assert [r[1] for r in rows[1:]] == ["1.0", "2.0", "3.0"]


def test_labels_print_score_table_and_score_only_agrees(data: Path, tmp_path: Path, capsys):
    labels = tmp_path / "windows.json"
    labels.write_text(
        json.dumps(
            {
                "top.csv": [["2020-01-01 03:15:00.000000", "2020-01-01 03:40:00.000000"]],  # rows 39..44
                "group/a.csv": [["2020-01-01 05:45:00", "2020-01-01 06:00:00"]],  # rows 69..72
                "group/deeper/b.csv": [],
            }
        )
    )
    out = tmp_path / "out"
    assert run(["--data", data, "--out", out, "--detector", NAME, "--labels", labels, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "NAB scores: 3 series, 2 windows" in printed
    for profile in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"):
        assert profile in printed
    assert run(["--score-only", out, "--labels", labels]) == 0
    assert capsys.readouterr().out == printed


def test_profiles_file_and_score_only_needs_labels(data: Path, tmp_path: Path, capsys):
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps({"mine": {"CostMatrix": {"tpWeight": 1, "fpWeight": 0.5, "fnWeight": 1}}}))
    labels = tmp_path / "windows.json"
    labels.write_text(json.dumps({"top.csv": [["2020-01-01 03:15:00", "2020-01-01 03:40:00"]]}))
    out = tmp_path / "out"
    assert run(["--data", data, "--out", out, "--detector", NAME, "--quiet"]) == 0
    assert run(["--score-only", out, "--labels", labels, "--profiles", profiles]) == 0
    captured = capsys.readouterr()
    assert "mine" in captured.out and "standard" not in captured.out
    assert "no labels for: group/a.csv, group/deeper/b.csv" in captured.err
    with pytest.raises(SystemExit):
        run(["--score-only", out])
    assert "--score-only needs --labels" in capsys.readouterr().err


def test_label_key_matching():
    keys = ["realTraffic/speed_6005.csv", "realTraffic/occupancy_6005.csv", "a/x_b.csv", "a/b.csv"]
    assert backtest.label_key_for("realTraffic/speed_6005.csv", keys) == "realTraffic/speed_6005.csv"
    assert backtest.label_key_for("realTraffic/numenta_speed_6005.csv", keys) == "realTraffic/speed_6005.csv"
    assert backtest.label_key_for("a/det_x_b.csv", keys) == "a/x_b.csv"
    assert backtest.label_key_for("a/det_b.csv", keys) == "a/b.csv"
    assert backtest.label_key_for("other/speed_6005.csv", keys) is None


def test_progress_bar_line():
    import io

    stream = io.StringIO()
    progress = backtest.Progress(2, stream=stream)
    progress.advance(100)
    progress.advance(50)
    assert "2/2 series  150 points" in stream.getvalue() and "points/s" in stream.getvalue()


def test_importable_without_pyspark():
    code = "import sys, tools.backtest; assert 'pyspark' not in sys.modules, 'pyspark imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"NAB data not found at {SHARED} (../shared is absent)")
def test_score_only_reproduces_published_numenta_scores(capsys):
    labels = SHARED / "labels" / "combined_windows.json"
    assert run(["--score-only", SHARED / "reference_results" / "numenta", "--labels", labels]) == 0
    out = capsys.readouterr().out
    assert "31 series, 53 windows" in out
    assert " 69.52 " in out and " 62.88 " in out and " 74.02 " in out


def gzip_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, gzip.open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def test_gz_series_reads_as_its_csv(tmp_path: Path):
    plain = tmp_path / "x.csv"
    write_series(plain, 40, spike_at=30, seed=4)
    gzip_copy(plain, tmp_path / "gz" / "x.csv.gz")
    a, b = backtest.read_series(plain), backtest.read_series(tmp_path / "gz" / "x.csv.gz")
    assert a.timestamps == b.timestamps and a.values_text == b.values_text and len(a.timestamps) == 40
    assert np.array_equal(a.ts_ms, b.ts_ms) and np.array_equal(a.values, b.values)


def test_gz_keys_drop_gz_and_results_are_plain_csv(data: Path, tmp_path: Path):
    mixed = tmp_path / "mixed"
    gzip_copy(data / "group" / "a.csv", mixed / "group" / "a.csv.gz")
    write_series(mixed / "top.csv", 60, spike_at=40, seed=1)
    (mixed / "group" / "notes.csv.txt").write_text("not a series")
    files = backtest.find_csvs(mixed)
    assert [backtest.series_key(p, mixed) for p in files] == ["group/a.csv", "top.csv"]
    out = tmp_path / "out"
    assert run(["--data", mixed, "--out", out, "--detector", NAME, "--quiet"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["group/a.csv", "top.csv"]
    # the same series uncompressed gives the same result file, byte for byte
    assert run(["--data", data, "--out", tmp_path / "plain", "--detector", NAME, "--quiet"]) == 0
    assert (out / "group" / "a.csv").read_bytes() == (tmp_path / "plain" / "group" / "a.csv").read_bytes()


def test_same_series_compressed_and_not_is_refused(tmp_path: Path, capsys):
    write_series(tmp_path / "d" / "x.csv", 10)
    gzip_copy(tmp_path / "d" / "x.csv", tmp_path / "d" / "x.csv.gz")
    assert run(["--data", tmp_path / "d", "--out", tmp_path / "o", "--detector", NAME, "--quiet"]) == 1
    assert "the same series twice (compressed and not)" in capsys.readouterr().err


def test_labelled_gz_corpus_scores_like_its_csv(data: Path, tmp_path: Path, capsys):
    labels = tmp_path / "windows.json"
    labels.write_text(
        json.dumps(
            {
                "top.csv": [["2020-01-01 03:15:00", "2020-01-01 03:40:00"]],  # rows 39..44: the spike at 40
                "group/a.csv": [["2020-01-01 05:45:00", "2020-01-01 06:00:00"]],  # rows 69..72: the spike at 70
                "group/deeper/b.csv": [],
            }
        )
    )
    gz = tmp_path / "gz"
    for path in data.rglob("*.csv"):
        gzip_copy(path, gz / (path.relative_to(data).as_posix() + ".gz"))
    argv = ["--detector", NAME, "--labels", labels, "--quiet"]
    assert run(["--data", gz, "--out", tmp_path / "o-gz", *argv]) == 0
    printed = capsys.readouterr().out
    assert "NAB scores: 3 series, 2 windows" in printed
    # both spikes are found, in their windows, and nothing else is flagged
    standard = next(line for line in printed.splitlines() if line.startswith("standard")).split()
    assert standard[-3:] == ["2", "0", "0"] and float(standard[2]) > 90.0
    assert run(["--data", data, "--out", tmp_path / "o-csv", *argv]) == 0
    assert capsys.readouterr().out == printed
    # results of a gz corpus score by --score-only, and gzipped results too
    assert run(["--score-only", tmp_path / "o-gz", "--labels", labels]) == 0
    assert capsys.readouterr().out == printed
    for path in list((tmp_path / "o-gz").rglob("*.csv")):
        gzip_copy(path, path.with_name(path.name + ".gz"))
        path.unlink()
    assert run(["--score-only", tmp_path / "o-gz", "--labels", labels]) == 0
    assert capsys.readouterr().out == printed
