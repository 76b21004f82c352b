"""GPU measurement aids the steps share: kernel time per family (torch.profiler), how busy the GPU is over a
denoise, and the SM clock and power sampled from nvidia-smi. Imports torch only when called."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time

from .common import denoise, sync

KERNEL_FAMILIES = ("gemm", "attention", "triton (fused elementwise)", "other")


def _family(kernel: str) -> str:
    k = kernel.lower()
    if any(x in k for x in ("flash", "fmha", "attention", "sdpa", "cudnn")):
        return "attention"
    if any(x in k for x in ("gemm", "sm90", "cutlass", "nvjet", "matmul", "xmma")):
        return "gemm"
    return "triton (fused elementwise)" if "triton" in k else "other"


def profile_step(engine, embeds) -> dict:
    """GPU time per kernel family over one 1-step denoise (a transformer call), in ms, and its wall time."""
    from torch.profiler import ProfilerActivity, profile

    denoise(engine, embeds, steps=1)
    sync()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        denoise(engine, embeds, steps=1)
        sync()
        wall = time.perf_counter() - t
    kernels = [e for e in prof.key_averages() if str(getattr(e, "device_type", "")).endswith("CUDA")
               and (getattr(e, "device_time_total", 0) or getattr(e, "self_device_time_total", 0))]
    families = dict.fromkeys(KERNEL_FAMILIES, 0.0)
    for e in kernels:
        families[_family(e.key)] += e.device_time_total / 1000
    top = sorted(((e.key[:90], round(e.device_time_total / 1000, 2)) for e in kernels), key=lambda x: -x[1])[:15]
    return {"wall_ms": round(wall * 1000, 1), "kernel_ms": {k: round(v, 1) for k, v in families.items()}, "top": top}


def gpu_busy(engine, embeds) -> dict:
    """One 8-step denoise under the profiler (CUDA activity only, so the CPU side runs as usual): the
    kernels' busy time against the span from first kernel to last, and the largest idle gaps between kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        denoise(engine, embeds)
        sync()
        wall = time.perf_counter() - t
    kernels = sorted(((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                      if e.device_type == DeviceType.CUDA), key=lambda k: k[0])
    busy, gaps, end, prev = 0.0, [], None, None
    for start, stop, name in kernels:
        if end is not None and start > end:
            gaps.append((start - end, prev, name))
        if end is None or stop > end:
            busy += stop - max(start, end if end is not None else start)
            end, prev = stop, name
    span = kernels[-1][1] - kernels[0][0]
    gaps.sort(key=lambda g: -g[0])
    return {"wall_ms": round(wall * 1000, 1), "span_ms": round(span / 1000, 1), "busy_ms": round(busy / 1000, 1),
            "idle_ms": round((span - busy) / 1000, 1), "kernels": len(kernels),
            "gaps_over_50us": sum(g[0] > 50 for g in gaps), "idle_in_gaps_over_50us_ms": round(sum(g[0] for g in gaps if g[0] > 50) / 1000, 1),
            "largest_gaps": [(round(g[0] / 1000, 3), g[1][:70], g[2][:70]) for g in gaps[:12]]}


class GpuSampler:
    """The GPU's SM clock and power every ``period`` seconds (nvidia-smi), each sample tagged with the phase
    running when it was taken. Starts sampling when made; :meth:`summary` stops it."""

    FIELDS = ("clocks.sm", "clocks.max.sm", "power.draw", "power.limit", "temperature.gpu",
              "clocks_event_reasons.sw_power_cap", "clocks_event_reasons.hw_slowdown",
              "clocks_event_reasons.sw_thermal_slowdown")

    def __init__(self, period=0.1):
        self.period, self.phase, self.rows, self._stop = period, "idle", [], threading.Event()
        self.fields = self.FIELDS if self._query(self.FIELDS).returncode == 0 else self.FIELDS[:5]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def _query(fields):
        return subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True)

    def _sample(self):
        while not self._stop.is_set():
            phase = self.phase
            r = self._query(self.fields)
            if r.returncode == 0 and phase == self.phase:
                self.rows.append((phase, [x.strip() for x in r.stdout.strip().split(",")]))
            self._stop.wait(self.period)

    def summary(self) -> dict:
        self._stop.set()
        self._thread.join()
        out = {}
        for phase in dict.fromkeys(p for p, _ in self.rows):
            rows = [v for p, v in self.rows if p == phase]
            num = lambda i: [float(v[i]) for v in rows if v[i].replace(".", "", 1).isdigit()]
            entry = {"samples": len(rows), "sm_clock_mhz_median": statistics.median(num(0)) if num(0) else None,
                     "sm_clock_mhz_min": min(num(0)) if num(0) else None, "sm_clock_max_mhz": rows[0][1],
                     "power_w_median": statistics.median(num(2)) if num(2) else None, "power_limit_w": rows[0][3],
                     "temperature_c_max": max(num(4)) if num(4) else None}
            for i, name in enumerate(self.fields[5:], 5):
                entry[name.split(".")[-1] + "_share"] = round(sum(v[i] == "Active" for v in rows) / len(rows), 2)
            out[phase] = entry
        return out
