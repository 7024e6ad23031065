"""The benchmark suite (benchmarks/run.py) at test size: every section runs and the JSON has every figure."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from benchmarks import run  # the repository root is on sys.path under pytest

pytestmark = pytest.mark.slow  # end to end: `pytest -m "not slow"` skips it


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_suite_tiny_writes_every_figure(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a shared 2-core machine makes 2-thread tiny steps erratic
    # the memory probe in-process (a fresh interpreter per model costs seconds of imports)
    monkeypatch.setattr(run, "measure_memory_subprocess", run.probe_memory)
    sizes = copy.deepcopy(run.SIZES["tiny"])
    sizes["name"] = "tiny"
    out = tmp_path / "results.json"
    try:
        returned = run.run_suite(sizes, "cpu", out, command="pytest", workdir=tmp_path, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(returned))
    assert results["complete"] is True and results["command"] == "pytest"
    assert not list(tmp_path.glob(".results.json.*"))  # the temporary file was renamed into place

    machine = results["machine"]
    for key in ("cpu_model", "cpu_cores", "torch", "device", "device_name"):
        assert machine[key], key

    ceiling = results["matmul"]["fp32"]
    assert _positive(ceiling["flops_per_s"]) and _positive(ceiling["flops_per_cpu_s"])

    for pair in ("bmmae_pretrain", "cswin_unet"):
        block = results["models"][pair]["fp32"]
        for role in ("ours", "monai"):
            r = block[role]
            for key in ("step_s", "step_cpu_s", "volumes_per_s", "params", "flops_per_step", "achieved_flops_per_s",
                        "fraction_of_ceiling", "fraction_of_ceiling_cpu", "peak_mem_bytes"):
                assert _positive(r[key]), (pair, role, key, r.get(key))
            assert r["fraction_of_ceiling"] < 1.5  # a model step cannot beat the dense-matmul ceiling by much
        for key in ("ratio_step_s", "ratio_step_cpu_s", "ratio_flops", "ratio_achieved_flops_per_s", "ratio_params",
                    "ratio_peak_mem"):
            assert _positive(block[key]), (pair, key)
        assert block["ratio_step_s"] == pytest.approx(block["ours"]["step_s"] / block["monai"]["step_s"])

    speed = results["speed_paths"]["cswin_unet"]["fp32"]
    assert set(speed) == {"plain", "channels_last"} and results["speed_paths"]["compile"] is False
    for variant in ("plain", "channels_last"):
        assert _positive(speed[variant]["step_s"]) and _positive(speed[variant]["first_step_s"])
    assert speed["channels_last"]["ratio_to_plain"] == pytest.approx(
        speed["channels_last"]["step_s"] / speed["plain"]["step_s"])

    data = results["data"]["workers_0"]
    for key in ("raw_s", "cold_s", "setup_s", "cache_s", "raw_cases_per_s", "cache_cases_per_s", "cache_speedup",
                "cases"):
        assert _positive(data[key]), key
    assert isinstance(data["cache_holds_arrays"], bool)

    ev = results["eval"]
    for key in ("picai_eval_s", "picai_eval_s_per_case", "detection_map_s_per_case", "cases"):
        assert _positive(ev[key]), key

    sw = results["sliding_window"]["fp32"]
    for key in ("s_per_case", "flops_per_case", "achieved_flops_per_s", "fraction_of_ceiling", "windows_per_case"):
        assert _positive(sw[key]), key
    assert sw["windows_per_case"] == 9  # 8x32x32 in 8x16x16 windows at overlap 0.25: 3 x 3

    assert "ratio ours/monai" in run.format_table(results)


def test_sizes_for_flags():
    sizes = run.sizes_for(full=True, workers=[16], batch=2, repeats=4)
    assert sizes["name"] == "full" and sizes["data"]["workers"] == [16]
    assert sizes["bmmae_pretrain"]["batch"] == 2 and sizes["bmmae_pretrain"]["embed_dim"] == 768
    assert sizes["data"]["spatial_size"] == [20, 256, 256] and sizes["cswin_unet"]["repeats"] == 4
    assert run.SIZES["full"]["bmmae_pretrain"]["batch"] == 6  # the table itself is untouched
