"""benchmarks/gpu_check.py: its CPU dry run (tiny sizes) prints one table whose rows ran likeness's real paths."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(out: str) -> dict[str, list[str]]:
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0] == "| check | precision | status | seconds | peak GPU GiB |"
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}


def test_dry_run_prints_one_table_of_ok_rows(gpu_check, tiny_models, tmp_path, capsys):
    """Textual inversion on tiny-sd; the FLUX IP-Adapter and InfiniteYou (ArcFace) on tiny-flux, the base of their
    family, with tiny published-layout files written to a weights folder and found there by discovery."""
    import importlib.util

    import torch

    from likeness.cli import build_parser

    arcface = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx"))
    previous = torch.get_num_threads()
    try:
        code = gpu_check.main(["--dry-run", "--device", "cpu", "--only", "methods,metrics,clip", "--methods",
                               "textual-inversion,flux-ip-adapter,infiniteyou", "--wheels-dir",
                               str(tmp_path / "no-wheels"), "--workdir", str(tmp_path / "work")])
    finally:
        torch.set_num_threads(previous)
    out = capsys.readouterr().out
    assert code == 0
    rows = _rows(out)
    assert rows["textual-inversion personalize + generate (tiny)"][1] == "ok: on likeness/tiny-sd"
    assert rows["flux-ip-adapter personalize + generate (tiny)"][1] == "ok: on likeness/tiny-flux"
    if arcface:  # the test extra has onnx and onnxruntime: the ArcFace method runs with the tiny pack
        assert rows["infiniteyou personalize + generate (tiny)"][1] == "ok: on likeness/tiny-flux"
    else:
        assert rows["infiniteyou personalize + generate"][1].startswith("skipped: its ArcFace face stack needs")
    work = tmp_path / "work"
    # The published layouts were written where a download puts them, and each peer's images exist.
    assert (work / "weights" / "clip-vit-large-patch14" / "model.safetensors").is_file()
    for method in ("flux-ip-adapter", "infiniteyou") if arcface else ("flux-ip-adapter",):
        assert list((work / f"{method}-default" / "images").rglob("*.png")), method
    assert rows["metric ips (likeness evaluate)"][1] == "ok" and rows["metric clip-t (likeness evaluate)"][1] == "ok"
    one, batched = rows["CLIP images, one at a time"], rows["CLIP images, batches of 4"]
    assert one[1].startswith("ok: ") and "images/s" in one[1] and "x one-at-a-time" in batched[1]
    assert all(r[3] == "-" for r in rows.values())  # no GPU memory on a CPU
    assert "mode: dry run (tiny sizes)" in out
    # The generated images exist where the rows say they ran.
    assert list((tmp_path / "work").rglob("images/**/*.png"))
    # The device flag reached the commands: every command that runs a model has --device.
    subcommands = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices).choices
    assert all("--device" in subcommands[c]._option_string_actions for c in ("personalize", "generate"))


def test_prepare_mode_names_the_wheels_and_the_limit(gpu_check):
    text = gpu_check.__doc__ + " ".join(gpu_check.PURE_WHEELS + gpu_check.BINARY_WHEELS)
    assert "diffusers==0.42.1" in gpu_check.PURE_WHEELS and "dlib-bin==20.0.1" in gpu_check.BINARY_WHEELS
    assert ".gpu-wheels" in text and "carry" in text
    assert gpu_check.WHEELS_LIMIT <= 64 * 2**20


def test_arcface_methods_are_skipped_with_the_reason_where_onnxruntime_is_absent(gpu_check, tmp_path, monkeypatch):
    """On the GPU machine onnxruntime is absent (its wheel does not fit the carry): the ArcFace methods get a skipped
    row naming the module and why it is not carried; nothing is written or run for them."""
    monkeypatch.setattr(gpu_check, "ARCFACE_MODULES", ("onnxruntime", "likeness_gpu_check_absent_module"))
    table = gpu_check.Table("cpu")
    gpu_check.method_rows(table, tmp_path, tmp_path / "photo.jpg", "cpu", True, ["instantid", "pulid-flux"], [])
    assert [row[0] for row in table.rows] == ["instantid personalize + generate", "pulid-flux personalize + generate"]
    for row in table.rows:
        assert row[2].startswith("skipped: its ArcFace face stack needs likeness_gpu_check_absent_module, absent here")
        assert "22.5 MiB" in row[2] and "60 MiB" in row[2]
    assert not (tmp_path / "weights").exists()
