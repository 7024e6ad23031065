"""medssl benchmark suite: train steps beside their MONAI peers, the device's matmul ceiling, the data
pipeline (raw files vs the PersistentDataset cache), picai_eval and sliding-window inference.

Every figure is the median of several runs after warm-up. The compared models' timed steps alternate
(``bench_cswin.time_alternating``) so that load drift on a shared machine hits both alike; process CPU
time is recorded beside wall time (steadier under light sharing; under heavy sharing OpenMP's spinning
threads inflate both, see BENCHMARKS.md), with the load average before and after every section. The
JSON (written atomically, also after every section) holds the machine, the exact command and every figure.

Usage:
    python benchmarks/run.py --out benchmarks/results_cpu.json              # CPU sizes, < 10 min on 2 cores
    python benchmarks/run.py --device cuda --full --out results_gpu.json    # reference sizes, fp32 + bf16
    python benchmarks/run.py --full --workers 16 --skip models matmul       # data pipeline on a server
    python benchmarks/run.py --tiny                                         # smoke run (test sizes)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/run.py ...                    # on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from einops import rearrange  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.bench_cswin import build_cswin, build_swin_unetr, make_loss_step, time_alternating  # noqa: E402

SECTIONS = ("matmul", "models", "speed_paths", "data", "eval", "sliding_window")
PAIRS = ("bmmae_pretrain", "cswin_unet")
NAMES = {
    "bmmae_pretrain": {"ours": "medssl BMMAE (4 modalities)",
                       "monai": "monai MaskedAutoEncoderViT (in_channels=4)"},
    "cswin_unet": {"ours": "medssl CSwinUNet", "monai": "monai SwinUNETR"},
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# Thread settings that change CPU figures a lot on a shared machine (recorded in the JSON).
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME",
            "CUDA_VISIBLE_DEVICES")

# Sizes. "default" runs on 2 CPU cores in minutes; "full" is the reference size (for a GPU);
# "tiny" is for the test suite only.
SIZES: dict[str, dict[str, Any]] = {
    "default": {
        "matmul": {"n": 2048, "warmup": 2, "repeats": 7},
        "bmmae_pretrain": {
            "batch": 1, "modalities": 4, "img_size": 64, "patch_size": 16, "embed_dim": 192, "depth": 4,
            "num_heads": 4, "mlp_dim": 384, "decoder_embed_dim": 96, "decoder_depth": 1, "decoder_num_heads": 4,
            "decoder_mlp_dim": 384, "mask_ratio": 0.75, "warmup": 2, "repeats": 5,
        },
        "cswin_unet": {
            "shape": [1, 3, 32, 64, 64], "cswin_kwargs": {}, "swin_feature_size": 48, "warmup": 1, "repeats": 3,
        },
        "data": {
            "cases": 24, "fov_mm": 64.0, "spacing": [3.0, 0.5, 0.5], "spatial_size": [20, 128, 128],
            "workers": [0, 2], "repeats": 3,
        },
        "eval": {"warmup": 1, "repeats": 3, "num_parallel_calls": 1},
        "sliding_window": {
            "shape": [1, 3, 20, 256, 256], "roi": [20, 256, 256], "overlap": 0.25, "sw_batch_size": 2,
            "mode": "gaussian", "cswin_kwargs": {}, "warmup": 1, "repeats": 3,
            "note": "real size, roi = the whole case as in configs/finetune/cswin_picai.yaml (no flip TTA, which "
                    "doubles it)",
        },
    },
    "full": {
        "matmul": {"n": 8192, "warmup": 3, "repeats": 10},
        "bmmae_pretrain": {
            "batch": 6, "modalities": 4, "img_size": 128, "patch_size": 16, "embed_dim": 768, "depth": 12,
            "num_heads": 12, "mlp_dim": 1536, "decoder_embed_dim": 384, "decoder_depth": 3, "decoder_num_heads": 12,
            "decoder_mlp_dim": 1536, "mask_ratio": 0.75, "warmup": 3, "repeats": 10,
        },
        "cswin_unet": {
            "shape": [2, 3, 32, 128, 128], "cswin_kwargs": {}, "swin_feature_size": 48, "warmup": 3, "repeats": 10,
        },
        "data": {
            "cases": 48, "fov_mm": 192.0, "spacing": [3.0, 0.5, 0.5], "spatial_size": [20, 256, 256],
            "workers": [0, 2], "repeats": 3,
        },
        "eval": {"warmup": 1, "repeats": 3, "num_parallel_calls": 1},
        "sliding_window": {
            "shape": [1, 3, 20, 256, 256], "roi": [20, 256, 256], "overlap": 0.25, "sw_batch_size": 2,
            "mode": "gaussian", "cswin_kwargs": {}, "warmup": 2, "repeats": 5,
            "note": "real size, roi = the whole case as in configs/finetune/cswin_picai.yaml (no flip TTA, which "
                    "doubles it)",
        },
    },
    "tiny": {
        "matmul": {"n": 128, "warmup": 1, "repeats": 3},
        "bmmae_pretrain": {
            "batch": 1, "modalities": 4, "img_size": 16, "patch_size": 8, "embed_dim": 24, "depth": 1,
            "num_heads": 2, "mlp_dim": 48, "decoder_embed_dim": 12, "decoder_depth": 1, "decoder_num_heads": 2,
            "decoder_mlp_dim": 24, "mask_ratio": 0.75, "warmup": 1, "repeats": 3,
        },
        "cswin_unet": {
            "shape": [1, 3, 32, 32, 32],
            "cswin_kwargs": {"embed_dim": 6, "depths": [1, 1, 1, 1], "num_heads": [2, 2, 2, 2],
                             "norm_name": ["group", {"num_groups": 1}]},
            "swin_feature_size": 12,
            "swin_kwargs": {"depths": [1, 1, 1, 1], "norm_name": ["group", {"num_groups": 1}]},
            "warmup": 1, "repeats": 1,
        },
        "data": {
            "cases": 16, "fov_mm": 16.0, "spacing": [3.0, 1.0, 1.0], "spatial_size": [8, 16, 16],
            "workers": [0], "repeats": 2,
        },
        "eval": {"warmup": 1, "repeats": 2, "num_parallel_calls": 1},
        "sliding_window": {
            "shape": [1, 3, 8, 32, 32], "roi": [8, 16, 16], "overlap": 0.25, "sw_batch_size": 2, "mode": "gaussian",
            "cswin_kwargs": {"embed_dim": 6, "depths": [1, 1, 1, 1], "num_heads": [2, 2, 2, 2]},
            "warmup": 1, "repeats": 2, "note": "test size",
        },
    },
}


# --------------------------------------------------------------------------- helpers


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to tuples (MONAI norm names are ``(name, {args})`` tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, cores, memory, library versions and the device name."""
    import monai

    dev = torch.device(device)
    mem_kb = None
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    info = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1) if mem_kb else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": _cpu_model(),
        "loadavg_at_start": _loadavg(),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(device_name=torch.cuda.get_device_name(dev), device_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as JSON, through medssl's one atomic writer (temporary name, read back, then renamed)."""
    from medssl.io import write_json

    json.dumps(obj, allow_nan=False)  # the results must be strict JSON
    write_json(path, obj)


def bench_matmul(device: str, dtypes: Sequence[str], n: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Median FLOP/s of ``n x n @ n x n`` matmuls per dtype (wall, and per CPU-second on CPU)."""
    dev = torch.device(device)
    out: dict[str, Any] = {"n": n, "warmup": warmup, "repeats": repeats, "torch_threads": torch.get_num_threads()}
    gen = torch.Generator().manual_seed(0)
    for name in dtypes:
        dtype = DTYPES[name] or torch.float32
        a = torch.randn(n, n, generator=gen).to(dev, dtype)
        b = torch.randn(n, n, generator=gen).to(dev, dtype)
        c = torch.empty(n, n, device=dev, dtype=dtype)
        walls, cpus = [], []
        for i in range(warmup + repeats):
            _sync(dev)
            start, start_cpu = time.perf_counter(), time.process_time()
            torch.mm(a, b, out=c)
            _sync(dev)
            if i >= warmup:
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - start_cpu)
        flops = 2.0 * n**3
        wall, cpu = _median(walls), _median(cpus)
        out[name] = {
            "flops": flops,
            "s": wall,
            "cpu_s": cpu,
            "min_s": min(walls),
            "flops_per_s": flops / wall,
            "flops_per_cpu_s": flops / cpu if cpu > 0 else None,
            "all_s": [round(w, 5) for w in walls],
        }
        del a, b, c
    return out


# --------------------------------------------------------------------------- 1. model train steps


def build_case(pair: str, role: str, cfg: dict[str, Any], device: torch.device, channels_last: bool = False
               ) -> tuple[nn.Module, Callable[[], torch.Tensor], int]:
    """One compared model with its inputs on ``device`` (``channels_last``: conv weights and input
    in ``torch.channels_last_3d``, as the systems' ``channels_last`` option does).

    Returns:
        ``(model, loss_fn, batch)``: ``loss_fn()`` runs the model's forward and returns the scalar loss.
    """
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if pair == "bmmae_pretrain":
        from monai.networks.nets import MaskedAutoEncoderViT

        from medssl.models.bmmae import BMMAE, BRATS_MODALITIES

        b, m, s, p = cfg["batch"], cfg["modalities"], cfg["img_size"], cfg["patch_size"]
        x = torch.randn(b, m, s, s, s, generator=gen).to(device)
        if role == "ours":
            model = BMMAE(
                modalities=BRATS_MODALITIES[:m], img_size=s, patch_size=p, embed_dim=cfg["embed_dim"],
                depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_dim"] / cfg["embed_dim"],
                decoder_embed_dim=cfg["decoder_embed_dim"], decoder_depth=cfg["decoder_depth"],
                decoder_num_heads=cfg["decoder_num_heads"], decoder_mlp_dim=cfg["decoder_mlp_dim"],
                decoder_dropout=0.0, mask_ratio=cfg["mask_ratio"],
            ).to(device)
            volumes = {name: x[:, i: i + 1] for i, name in enumerate(model.modalities)}
            modality_mask = torch.ones(b, m, dtype=torch.bool, device=device)
            return model, lambda: model(volumes, modality_mask)["loss"], b
        model = MaskedAutoEncoderViT(
            in_channels=m, img_size=s, patch_size=p, hidden_size=cfg["embed_dim"], mlp_dim=cfg["mlp_dim"],
            num_layers=cfg["depth"], num_heads=cfg["num_heads"], masking_ratio=cfg["mask_ratio"],
            decoder_hidden_size=cfg["decoder_embed_dim"], decoder_mlp_dim=cfg["decoder_mlp_dim"],
            decoder_num_layers=cfg["decoder_depth"], decoder_num_heads=cfg["decoder_num_heads"],
            qkv_bias=True, dropout_rate=0.0,
        ).to(device)
        # MONAI 1.6 writes the (autocast bf16) decoder tokens into an fp32 mask-token tensor, which
        # index_put refuses; an fp32 decoder_embed output (a no-op in fp32) lets it run under autocast.
        model.decoder_embed.register_forward_hook(lambda module, args, output: output.float())
        target = rearrange(x, "b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)", p1=p, p2=p, p3=p)

        def mae_loss() -> torch.Tensor:  # the same masked-patch MSE as BMMAE's
            pred, mask = model(x)
            err = ((pred.float() - target) ** 2).mean(dim=-1)
            return (err * mask).sum() / mask.sum()

        return model, mae_loss, b
    if pair == "cswin_unet":
        shape = cfg["shape"]
        x = torch.randn(*shape, generator=gen).to(device)
        target = torch.randint(0, 2, (shape[0], *shape[2:]), generator=gen).to(device)
        if role == "ours":
            model = build_cswin(shape[1], 2, **_tuples(cfg["cswin_kwargs"])).to(device)
        else:
            model = build_swin_unetr(shape[1], 2, feature_size=cfg["swin_feature_size"],
                                     **_tuples(cfg.get("swin_kwargs", {}))).to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last_3d)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return model, lambda: F.cross_entropy(model(x), target), shape[0]  # as bench_cswin.make_train_step
    raise ValueError(f"unknown pair {pair!r}; expected one of {PAIRS}")


def probe_memory(pair: str, role: str, cfg: dict[str, Any], device: str, dtype: str) -> dict[str, Any]:
    """Peak memory of one steady-state train step (run by ``measure_memory_subprocess`` in a fresh process).

    A step of the tiny twin runs first (one-time runtime buffers), then a first step of the model
    (library code, AdamW state); the second step is measured.
    CUDA: ``torch.cuda.max_memory_allocated`` over it. CPU: VmHWM over it (reset through
    ``/proc/self/clear_refs``) less the file-backed and shared pages (library code) less the anonymous
    memory held before the model was built. Both include parameters, AdamW state, inputs and activations.
    """
    dev = torch.device(device)
    # One step of the tiny twin first: the runtime's one-time buffers (about 70 MB on CPU) are then
    # part of the baseline, not of the model's figure.
    model, loss_fn, _ = build_case(pair, role, SIZES["tiny"][pair], dev)
    make_loss_step(model, loss_fn, dev, DTYPES[dtype])()
    del model, loss_fn
    gc.collect()
    anon_before_kb = _proc_status_kb("RssAnon")
    model, loss_fn, _ = build_case(pair, role, cfg, dev)
    step = make_loss_step(model, loss_fn, dev, DTYPES[dtype])
    step()
    out: dict[str, Any] = {"pair": pair, "role": role, "dtype": dtype}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        out.update(peak_mem_bytes=int(torch.cuda.max_memory_allocated(dev)),
                   mem_method="torch.cuda.max_memory_allocated over a steady-state step")
        return out
    reset = _reset_peak_rss()
    step()
    hwm_kb, file_kb, shmem_kb = (_proc_status_kb(k) for k in ("VmHWM", "RssFile", "RssShmem"))
    if None in (hwm_kb, file_kb, shmem_kb, anon_before_kb):
        raise RuntimeError("cannot read VmHWM/RssAnon/RssFile from /proc/self/status: no CPU memory figure here")
    out.update(peak_mem_bytes=(hwm_kb - file_kb - shmem_kb - anon_before_kb) * 1024,
               process_peak_rss_bytes=hwm_kb * 1024,
               mem_method="VmHWM over a steady-state step minus file-backed/shared pages minus anonymous memory "
                          "before the model was built" + ("" if reset else " (VmHWM not resettable: includes the "
                                                                            "first step)"))
    return out


def measure_memory_subprocess(pair: str, role: str, cfg: dict[str, Any], device: str, dtype: str,
                              timeout: float = 1800) -> dict[str, Any]:
    """Run ``probe_memory`` in a fresh Python process (so other models' allocations do not count)."""
    spec = json.dumps({"pair": pair, "role": role, "cfg": cfg, "device": device, "dtype": dtype,
                       "threads": torch.get_num_threads()})
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", spec],
                          capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe {pair}/{role}/{dtype} failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1:] or proc.stdout[-300:]}")
    return json.loads(lines[-1])


def bench_pair(pair: str, cfg: dict[str, Any], device: str, dtypes: Sequence[str],
               ceiling: dict[str, Any] | None, memory: bool = True) -> dict[str, Any]:
    """Train step of our model and its MONAI peer, alternated, per dtype; with FLOPs, memory and ratios.

    The first warm-up step of each model runs under ``FlopCounterMode`` (forward + backward FLOPs).
    Ratios are ours / MONAI (> 1: ours takes longer / holds more).
    """
    dev = torch.device(device)
    warmup, repeats = int(cfg["warmup"]), int(cfg["repeats"])
    out: dict[str, Any] = {"config": {k: v for k, v in cfg.items()}, "models": dict(NAMES[pair])}
    for dtype in dtypes:
        cases = {role: build_case(pair, role, cfg, dev) for role in ("ours", "monai")}
        steps, flops, res = {}, {}, {}
        for role, (model, loss_fn, batch) in cases.items():
            step = make_loss_step(model, loss_fn, dev, DTYPES[dtype])
            with FlopCounterMode(display=False) as counter:
                step()  # also the first warm-up step
            flops[role] = float(counter.get_total_flops())
            steps[role] = step
            res[role] = {"name": NAMES[pair][role], "params": sum(p.numel() for p in model.parameters()),
                         "batch": batch}
        times = time_alternating(steps, repeats, max(warmup - 1, 0))
        for role, values in times.items():
            walls, cpus = [w for w, _ in values], [c for _, c in values]
            r = res[role]
            r.update(step_s=_median(walls), step_cpu_s=_median(cpus), step_min_s=min(walls),
                     all_s=[round(w, 4) for w in walls])
            r["volumes_per_s"] = r["batch"] / r["step_s"]
            r["flops_per_step"] = flops[role]
            r["achieved_flops_per_s"] = flops[role] / r["step_s"]
            if ceiling and dtype in ceiling:
                r["fraction_of_ceiling"] = r["achieved_flops_per_s"] / ceiling[dtype]["flops_per_s"]
                if dev.type == "cpu" and ceiling[dtype].get("flops_per_cpu_s") and r["step_cpu_s"] > 0:
                    r["fraction_of_ceiling_cpu"] = (flops[role] / r["step_cpu_s"]) / ceiling[dtype]["flops_per_cpu_s"]
        del cases, steps, step, model, loss_fn
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if memory:  # one fresh process per model; on CPU the two run at once (only their memory is read)
            with ThreadPoolExecutor(max_workers=2 if dev.type == "cpu" else 1) as pool:
                probes = pool.map(lambda role, dt=dtype: measure_memory_subprocess(pair, role, cfg, device, dt),
                                  ("ours", "monai"))
                for probe in probes:
                    res[probe["role"]].update({k: v for k, v in probe.items() if k not in ("pair", "role", "dtype")})
        ours, monai = res["ours"], res["monai"]
        ratios = {
            "ratio_step_s": ours["step_s"] / monai["step_s"],
            "ratio_step_cpu_s": ours["step_cpu_s"] / monai["step_cpu_s"] if monai["step_cpu_s"] > 0 else None,
            "ratio_step_min_s": ours["step_min_s"] / monai["step_min_s"],
            "ratio_flops": ours["flops_per_step"] / monai["flops_per_step"],
            "ratio_achieved_flops_per_s": ours["achieved_flops_per_s"] / monai["achieved_flops_per_s"],
            "ratio_params": ours["params"] / monai["params"],
        }
        if memory:
            ratios["ratio_peak_mem"] = ours["peak_mem_bytes"] / monai["peak_mem_bytes"]
        out[dtype] = {"ours": ours, "monai": monai, **ratios}
    return out


# --------------------------------------------------------------------------- 2b. speed paths


def bench_speed_paths(sizes: dict[str, Any], device: str, dtypes: Sequence[str], compile_models: bool
                      ) -> dict[str, Any]:
    """Our models' train step with each speed option against the plain step, alternated.

    CSwin UNet: plain, channels-last and (``compile_models``) ``torch.compile`` (inductor). BM-MAE
    (only with ``compile_models``; it has one conv): plain and compiled. The compiled variant's
    first step (the compilation) is reported apart from its steady-state steps.
    """
    dev = torch.device(device)
    out: dict[str, Any] = {"compile": compile_models}
    pairs = {"cswin_unet": ["plain", "channels_last"] + (["compiled"] if compile_models else [])}
    if compile_models:
        pairs["bmmae_pretrain"] = ["plain", "compiled"]
    for pair, variants in pairs.items():
        cfg = sizes[pair]
        out[pair] = {}
        for dtype in dtypes:
            steps, first = {}, {}
            for variant in variants:
                model, loss_fn, _ = build_case(pair, "ours", cfg, dev, channels_last=variant == "channels_last")
                if variant == "compiled":
                    model.compile()
                steps[variant] = make_loss_step(model, loss_fn, dev, DTYPES[dtype])
                first[variant] = steps[variant]()[0]  # compiles the compiled one
            times = time_alternating(steps, int(cfg["repeats"]), max(int(cfg["warmup"]) - 1, 0))
            block = {}
            for variant, values in times.items():
                walls = [w for w, _ in values]
                block[variant] = {"step_s": _median(walls), "first_step_s": first[variant],
                                  "all_s": [round(w, 4) for w in walls]}
            for variant in variants[1:]:
                block[variant]["ratio_to_plain"] = block[variant]["step_s"] / block["plain"]["step_s"]
            out[pair][dtype] = block
            del steps, model, loss_fn
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- 3. data pipeline


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_data(cfg: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Cases/s of full passes over ``FinetuneDataModule.train_dataloader()``: from the raw files vs from
    the PersistentDataset cache, per worker count.

    Per repeat: ``raw`` = a pass of a module without cache (``cache_dir=None``: every case read,
    resampled and normalised); ``cold`` = ``setup()`` plus the first pass of a module with a fresh
    cache folder (the reads and cache writes, wherever the module does them: ``setup`` screens every
    case); ``cache`` = a second pass of that module (a new loader, so worker start-up counts alike).
    ``cache_speedup`` = raw / cache. An untimed raw pass comes first (imports, page cache).
    """
    from medssl.data.datamodule import FinetuneDataModule
    from medssl.data.synth import synth_picai

    root = workdir / "picai"
    start = time.perf_counter()
    synth_picai(root, cases=cfg["cases"], fov_mm=cfg["fov_mm"])
    synth_s = time.perf_counter() - start
    split_file = workdir / "splits.json"  # one split for every module (and nothing written to the cwd)

    def module(cache: Path | None, workers: int) -> tuple[FinetuneDataModule, float]:
        dm = FinetuneDataModule(root=str(root), spacing=list(cfg["spacing"]), spatial_size=list(cfg["spatial_size"]),
                                cache_dir=None if cache is None else str(cache), num_workers=workers,
                                augmentation=None, batch_size=1, split_file=str(split_file))
        start = time.perf_counter()
        dm.setup("fit")
        return dm, time.perf_counter() - start

    def one_pass(dm: FinetuneDataModule) -> tuple[float, int]:
        loader = dm.train_dataloader()
        start = time.perf_counter()
        n = sum(1 for _ in loader)
        seconds = time.perf_counter() - start
        del loader
        return seconds, n

    one_pass(module(None, 0)[0])
    out: dict[str, Any] = {
        "config": dict(cfg), "synth_s": synth_s,
        "how": "synth_picai + FinetuneDataModule(augmentation=None, batch_size=1); full passes over "
               "train_dataloader(): raw = module without cache; cold = setup() + first pass with a fresh cache "
               "folder; cache = second pass over that cache",
    }
    for workers in cfg["workers"]:
        raw, cold, setup, first, cached, n_cases, cache_bytes = [], [], [], [], [], 0, 0
        for r in range(cfg["repeats"]):
            raw.append(one_pass(module(None, workers)[0])[0])
            cache = workdir / f"cache_w{workers}_r{r}"
            dm, setup_s = module(cache, workers)
            first_s, n_cases = one_pass(dm)
            setup.append(setup_s)
            first.append(first_s)
            cold.append(setup_s + first_s)
            cached.append(one_pass(dm)[0])
            cache_bytes = sum(_dir_bytes(d) for d in cache.iterdir() if d.is_dir())
            shutil.rmtree(cache, ignore_errors=True)
        raw_bytes = sum(Path(p).stat().st_size for c in dm.train_cases for p in (*c.images.values(), c.label) if p)
        n_cached = len(dm.train_cases) + len(dm.val_cases)  # setup screens (and caches) every labelled case
        c, d, h, w = len(dm.modalities), *cfg["spatial_size"]
        array_bytes = c * d * h * w * 4 + d * h * w  # float32 image + uint8 label
        raw_s, cache_s = _median(raw), _median(cached)
        out[f"workers_{workers}"] = {
            "workers": workers, "cases": n_cases,
            "raw_s": raw_s, "cold_s": _median(cold), "setup_s": _median(setup), "first_pass_s": _median(first),
            "cache_s": cache_s, "raw_min_s": min(raw), "cache_min_s": min(cached),
            "raw_all_s": [round(v, 3) for v in raw], "cold_all_s": [round(v, 3) for v in cold],
            "cache_all_s": [round(v, 3) for v in cached],
            "raw_cases_per_s": n_cases / raw_s, "cache_cases_per_s": n_cases / cache_s,
            "cache_speedup": raw_s / cache_s,
            "raw_file_bytes_per_case": raw_bytes / max(n_cases, 1),
            "cache_bytes_per_case": cache_bytes / max(n_cached, 1),
            "preprocessed_array_bytes_per_case": array_bytes,
            "cache_holds_arrays": cache_bytes / max(n_cached, 1) >= 0.5 * array_bytes,
        }
    return out


# --------------------------------------------------------------------------- 4. evaluation


def bench_eval(cfg: dict[str, Any], root: Path, workdir: Path) -> dict[str, Any]:
    """Seconds of ``medssl.evaluation.picai.evaluate_maps`` (picai_eval.evaluate on written files).

    Detection maps are made from each labelled case's label (lesions at random confidences, smoothed,
    some false positives) with ``detection_map`` (dynamic threshold; timed apart) and written on the
    label's grid; then the whole set is scored ``repeats`` times after ``warmup`` untimed runs.
    """
    import SimpleITK as sitk

    from medssl.data.geometry import write_like
    from medssl.data.layouts import discover
    from medssl.evaluation.detection import detection_map, smooth
    from medssl.evaluation.picai import evaluate_maps

    rng = np.random.default_rng(0)
    cases = [c for c in discover("picai", str(root)) if c.label is not None]
    det_paths, label_paths, det_s = {}, {}, []
    for i, case in enumerate(cases):
        label = sitk.GetArrayFromImage(sitk.ReadImage(case.label)) >= 1
        prob = label.astype(np.float32) * rng.uniform(0.3, 0.95)
        if i % 3 == 0:  # a false positive
            z, y, x = (s // 2 for s in prob.shape)
            prob[z, y - 2: y + 3, x - 2: x + 3] = max(prob[z, y - 2: y + 3, x - 2: x + 3].max(), rng.uniform(0.1, 0.6))
        prob = np.clip(smooth(prob) * 1.5, 0.0, 1.0)
        start = time.perf_counter()
        det = detection_map(prob)
        det_s.append(time.perf_counter() - start)
        det_paths[case.case_id] = str(workdir / "det" / f"{case.case_id}.nii.gz")
        Path(det_paths[case.case_id]).parent.mkdir(parents=True, exist_ok=True)
        write_like(det, case.label, det_paths[case.case_id])
        label_paths[case.case_id] = case.label
    walls, cpus, metrics = [], [], None
    for i in range(cfg["warmup"] + cfg["repeats"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        metrics = evaluate_maps(det_paths, label_paths, num_parallel_calls=cfg["num_parallel_calls"])
        if i >= cfg["warmup"]:
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
    wall = _median(walls)
    return {
        "config": dict(cfg),
        "how": "medssl.evaluation.picai.evaluate_maps on detection maps written as .nii.gz (picai_eval.evaluate "
               "reads the files)",
        "cases": len(cases),
        "positive_cases": int(sum(bool(v) for v in metrics.case_target.values())),
        "auroc": float(metrics.auroc),
        "ap": float(metrics.AP),
        "picai_eval_s": wall,
        "picai_eval_cpu_s": _median(cpus),
        "picai_eval_min_s": min(walls),
        "picai_eval_s_per_case": wall / max(len(cases), 1),
        "picai_eval_all_s": [round(w, 4) for w in walls],
        "detection_map_s_per_case": _median(det_s),
        "label_shape": list(label.shape),
    }


# --------------------------------------------------------------------------- 5. sliding-window inference


def bench_sliding_window(cfg: dict[str, Any], device: str, dtypes: Sequence[str],
                         ceiling: dict[str, Any] | None) -> dict[str, Any]:
    """Seconds per case of MONAI ``sliding_window_inference`` with ``CSwinUNet`` (no grad, softmax)."""
    from monai.inferers import sliding_window_inference

    dev = torch.device(device)
    shape = cfg["shape"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen).to(dev)
    torch.manual_seed(0)
    net = build_cswin(shape[1], 2, **_tuples(cfg["cswin_kwargs"])).to(dev).eval()
    out: dict[str, Any] = {"config": dict(cfg), "params": sum(p.numel() for p in net.parameters())}
    for dtype in dtypes:
        windows = [0]

        def predictor(window: torch.Tensor, windows: list[int] = windows) -> torch.Tensor:
            windows[0] += window.shape[0]
            return torch.softmax(net(window).float(), dim=1)

        def run(dtype: str = dtype) -> tuple[float, float]:
            _sync(dev)
            start, start_cpu = time.perf_counter(), time.process_time()
            with torch.no_grad(), torch.autocast(dev.type, dtype=DTYPES[dtype], enabled=DTYPES[dtype] is not None):
                sliding_window_inference(x, tuple(cfg["roi"]), cfg["sw_batch_size"], predictor,
                                         overlap=cfg["overlap"], mode=cfg["mode"])
            _sync(dev)
            return time.perf_counter() - start, time.process_time() - start_cpu

        with FlopCounterMode(display=False) as counter:
            run()  # first warm-up run
        flops = float(counter.get_total_flops())
        windows_per_case = windows[0]
        for _ in range(max(cfg["warmup"] - 1, 0)):
            run()
        values = [run() for _ in range(cfg["repeats"])]
        wall, cpu = _median([w for w, _ in values]), _median([c for _, c in values])
        r = {
            "s_per_case": wall, "cpu_s_per_case": cpu, "min_s_per_case": min(w for w, _ in values),
            "all_s": [round(w, 3) for w, _ in values],
            "windows_per_case": windows_per_case, "flops_per_case": flops, "achieved_flops_per_s": flops / wall,
        }
        if ceiling and dtype in ceiling:
            r["fraction_of_ceiling"] = r["achieved_flops_per_s"] / ceiling[dtype]["flops_per_s"]
            if dev.type == "cpu" and ceiling[dtype].get("flops_per_cpu_s") and cpu > 0:
                r["fraction_of_ceiling_cpu"] = (flops / cpu) / ceiling[dtype]["flops_per_cpu_s"]
        out[dtype] = r
    return out


# --------------------------------------------------------------------------- the suite


def run_suite(
    sizes: dict[str, Any],
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    command: str | None = None,
    skip: Sequence[str] = (),
    memory: bool = True,
    workdir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    compile_models: bool = False,
) -> dict[str, Any]:
    """Run every section not in ``skip``; write the JSON (atomically) after each one when ``out`` is set."""
    suite_start = time.perf_counter()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    dtypes = ["fp32", "bf16"] if dev.type == "cuda" else ["fp32"]
    results: dict[str, Any] = {
        "schema": 1,
        "command": command or shlex.join(["python", *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(device),
        "dtypes": dtypes,
        "sizes": sizes.get("name", "custom"),
        "complete": False,
        "sections_s": {},
    }

    def save() -> None:
        if out is not None:
            write_json_atomic(out, results)

    def section(name: str, fn: Callable[[], Any]) -> None:
        if name in skip:
            return
        log(f"[bench] {name} ...")
        load_before, start = _loadavg(), time.perf_counter()
        value = fn()
        if isinstance(value, dict):
            value["wall_s"] = time.perf_counter() - start
            value["loadavg_before"], value["loadavg_after"] = load_before, _loadavg()
        results[name] = value
        results["sections_s"][name] = round(time.perf_counter() - start, 2)
        log(f"[bench] {name} done in {results['sections_s'][name]:.1f} s")
        save()

    m = sizes["matmul"]
    section("matmul", lambda: bench_matmul(device, dtypes, m["n"], m["warmup"], m["repeats"]))
    ceiling = results.get("matmul")
    section("models", lambda: {pair: bench_pair(pair, sizes[pair], device, dtypes, ceiling, memory)
                               for pair in PAIRS})
    section("speed_paths", lambda: bench_speed_paths(sizes, device, dtypes, compile_models))
    with tempfile.TemporaryDirectory(prefix="medssl_bench_", dir=workdir) as tmp:
        tmp_path = Path(tmp)
        section("data", lambda: bench_data(sizes["data"], tmp_path))
        if "eval" not in skip:
            root = tmp_path / "picai"
            if not root.is_dir():  # the data section was skipped
                from medssl.data.synth import synth_picai

                synth_picai(root, cases=sizes["data"]["cases"], fov_mm=sizes["data"]["fov_mm"])
            section("eval", lambda: bench_eval(sizes["eval"], root, tmp_path))
    section("sliding_window", lambda: bench_sliding_window(sizes["sliding_window"], device, dtypes, ceiling))
    results["machine"]["loadavg_at_end"] = _loadavg()
    results["suite_wall_s"] = time.perf_counter() - suite_start
    results["complete"] = True
    save()
    return results


# --------------------------------------------------------------------------- table


def _fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) and not unit:
        return f"{value:,}"
    value = float(value)
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if unit in ("FLOP", "FLOP/s", "B") and abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g}{(' ' + unit) if unit else ''}"


def format_table(results: dict[str, Any]) -> str:
    """A readable summary of the JSON."""
    lines = []
    mach = results["machine"]
    lines.append(f"machine: {mach['device_name']} | {mach['cpu_cores']} cores | torch {mach['torch']} | "
                 f"monai {mach['monai']} | device {mach['device']} | load {mach.get('loadavg_at_start')}")
    lines.append(f"command: {results['command']}")
    mm = results.get("matmul")
    if mm:
        for dt in results["dtypes"]:
            lines.append(f"matmul ceiling {dt} ({mm['n']}^2): {_fmt(mm[dt]['flops_per_s'], 'FLOP/s')} wall, "
                         f"{_fmt(mm[dt]['flops_per_cpu_s'], 'FLOP/s')} per CPU-second")
    models = results.get("models")
    if models:
        head = (f"{'model':<44} {'dtype':<5} {'step s':>8} {'cpu s':>8} {'vol/s':>7} {'params':>8} "
                f"{'GFLOP':>8} {'GFLOP/s':>8} {'ceil%':>6} {'ceil%cpu':>8} {'peak MB':>8}")
        lines += ["", head, "-" * len(head)]
        for pair in PAIRS:
            for dt in results["dtypes"]:
                block = models[pair].get(dt)
                if not block:
                    continue
                for role in ("ours", "monai"):
                    r = block[role]
                    frac, frac_cpu = r.get("fraction_of_ceiling"), r.get("fraction_of_ceiling_cpu")
                    mem = r.get("peak_mem_bytes")
                    lines.append(
                        f"{r['name'][:44]:<44} {dt:<5} {r['step_s']:>8.3f} {r['step_cpu_s']:>8.3f} "
                        f"{r['volumes_per_s']:>7.3f} {r['params'] / 1e6:>7.2f}M {r['flops_per_step'] / 1e9:>8.2f} "
                        f"{r['achieved_flops_per_s'] / 1e9:>8.2f} {'-' if frac is None else f'{100 * frac:.1f}':>6} "
                        f"{'-' if frac_cpu is None else f'{100 * frac_cpu:.1f}':>8} "
                        f"{'-' if mem is None else f'{mem / 2**20:.0f}':>8}")
                lines.append(f"{'  ratio ours/monai':<44} {dt:<5} {block['ratio_step_s']:>8.2f} "
                             f"{_fmt(block['ratio_step_cpu_s'], digits=3):>8} {'':>7} {block['ratio_params']:>8.2f} "
                             f"{block['ratio_flops']:>8.2f} {block['ratio_achieved_flops_per_s']:>8.2f} {'':>6} "
                             f"{'':>8} {_fmt(block.get('ratio_peak_mem')):>8}")
    speed = results.get("speed_paths")
    if speed:
        lines.append("")
        for pair in PAIRS:
            for dt, block in speed.get(pair, {}).items():
                parts = [f"{variant} {r['step_s']:.3f} s"
                         + (f" (x{r['ratio_to_plain']:.2f})" if "ratio_to_plain" in r else "")
                         + (f", first step {r['first_step_s']:.1f} s" if variant == "compiled" else "")
                         for variant, r in block.items()]
                lines.append(f"speed paths {pair} {dt}: " + "; ".join(parts))
    data = results.get("data")
    if data:
        lines.append("")
        for key, d in data.items():
            if key.startswith("workers_"):
                lines.append(f"data ({d['cases']} cases, workers={d['workers']}): raw {d['raw_s']:.2f} s "
                             f"({d['raw_cases_per_s']:.2f} cases/s), cold (setup + 1st pass) {d['cold_s']:.2f} s, "
                             f"cache {d['cache_s']:.2f} s "
                             f"({d['cache_cases_per_s']:.2f} cases/s), speed-up {d['cache_speedup']:.2f}x, "
                             f"cache {d['cache_bytes_per_case'] / 1e3:.1f} kB/case "
                             f"(arrays {d['preprocessed_array_bytes_per_case'] / 1e6:.2f} MB)")
    ev = results.get("eval")
    if ev:
        lines.append(f"picai_eval over {ev['cases']} cases: {ev['picai_eval_s']:.3f} s "
                     f"({ev['picai_eval_s_per_case'] * 1e3:.1f} ms/case); detection_map "
                     f"{ev['detection_map_s_per_case'] * 1e3:.1f} ms/case")
    sw = results.get("sliding_window")
    if sw:
        for dt in results["dtypes"]:
            r = sw.get(dt)
            if r:
                frac = r.get("fraction_of_ceiling")
                lines.append(f"sliding window {sw['config']['shape']} roi {sw['config']['roi']} {dt}: "
                             f"{r['s_per_case']:.2f} s/case (cpu {r['cpu_s_per_case']:.2f} s), "
                             f"{r['windows_per_case']} windows, {r['flops_per_case'] / 1e9:.0f} GFLOP, "
                             f"{r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s"
                             + ("" if frac is None else f" ({100 * frac:.1f}% of ceiling)"))
    if "suite_wall_s" in results:
        lines.append(f"\nsuite: {results['suite_wall_s']:.0f} s wall; sections {results['sections_s']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def sizes_for(full: bool | str, workers: Sequence[int] | None = None, batch: int | None = None,
              cswin_shape: Sequence[int] | None = None, sw_roi: Sequence[int] | None = None,
              repeats: int | None = None, sw_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """The size table for the flags (a deep copy of ``SIZES['full' or 'default']`` with overrides).

    ``full`` may also name a table (``"tiny"``: the test sizes, seconds in all).
    """
    name = full if isinstance(full, str) else "full" if full else "default"
    sizes = copy.deepcopy(SIZES[name])
    sizes["name"] = name
    if workers:
        sizes["data"]["workers"] = list(workers)
    if batch:
        sizes["bmmae_pretrain"]["batch"] = batch
    if cswin_shape:
        sizes["cswin_unet"]["shape"] = list(cswin_shape)
    if sw_shape:
        sizes["sliding_window"]["shape"] = list(sw_shape)
        sizes["sliding_window"]["note"] = "shape set with --sw-shape"
    if sw_roi:
        sizes["sliding_window"]["roi"] = list(sw_roi)
    if repeats:
        for key in ("matmul", "bmmae_pretrain", "cswin_unet", "data", "eval", "sliding_window"):
            sizes[key]["repeats"] = repeats
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", default=None, help="JSON file (written atomically, also after each section)")
    parser.add_argument("--full", action="store_true", help="reference sizes (BM-MAE 128^3 ViT-B, 20x256x256 data)")
    parser.add_argument("--tiny", action="store_true", help="the test sizes (a smoke run of seconds)")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="DataLoader worker counts to time")
    parser.add_argument("--batch", type=int, default=None, help="BM-MAE batch size (default 1; --full 6)")
    parser.add_argument("--cswin-shape", type=int, nargs=5, default=None, metavar=("B", "C", "D", "H", "W"),
                        help="CSwin/SwinUNETR train input (D, H, W divisible by 32)")
    parser.add_argument("--sw-shape", type=int, nargs=5, default=None, metavar=("B", "C", "D", "H", "W"),
                        help="sliding-window input (default 1 3 20 256 256)")
    parser.add_argument("--sw-roi", type=int, nargs=3, default=None, metavar=("D", "H", "W"))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (overrides all)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SECTIONS)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-model memory probe processes")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd steps (speed_paths; compiling takes minutes on a CPU)")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one memory probe
    args = parser.parse_args(argv)
    if args.probe:
        spec = json.loads(args.probe)
        torch.set_num_threads(int(spec["threads"]))
        print(json.dumps(probe_memory(spec["pair"], spec["role"], spec["cfg"], spec["device"], spec["dtype"])))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny and args.full:
        parser.error("--tiny and --full exclude each other")
    sizes = sizes_for("tiny" if args.tiny else args.full, args.workers, args.batch, args.cswin_shape, args.sw_roi,
                      args.repeats, args.sw_shape)
    command = shlex.join(["python", *(sys.argv if argv is None else ["benchmarks/run.py", *argv])])
    results = run_suite(sizes, args.device, args.out, command, args.skip, memory=not args.no_memory,
                        compile_models=args.compile)
    print(format_table(results))
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
