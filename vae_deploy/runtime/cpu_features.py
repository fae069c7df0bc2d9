"""What an int8 graph asks of the CPU (the manifest's `cpu_requirements`), and whether this CPU has it.

Why: ONNX Runtime's x86 int8 kernels (MLAS) multiply uint8 activations by int8 weights. With VNNI
(AVX-512 VNNI, AVX-VNNI: vpdpbusd) the products add up in int32. Without it (AVX2, AVX-512 without VNNI)
they go through vpmaddubsw, which adds each pair of products into a saturating int16: with full 8-bit
weights a pair can reach 2 x 255 x 127 > 32767, and the graph loses parity (the default model's
encoder mu fell to 27 dB where 35 dB is the rule). int8 activations with 8-bit weights ("S8S8") fail the
same way (the same 27.4 dB under emulation), so they are no way out. 7-bit weights (reduce_range:
2 x 255 x 64 fits) and uint8 weights (U8U8, another kernel) hold on CPUs with and without VNNI:
benchmarks/results/int8_cpu_parity.md measured them all.

The record, written by export for int8 folders (export/quantize.py) and empty for fp32/fp16 ones:

    quantization   "U8S8" | "U8U8" | "S8S8": activation and weight integer types
    reduce_range   7-bit weights
    x86_any_of     CPU flags (/proc/cpuinfo) of which an x86 CPU needs one for the graph's parity; [] = none

Folders exported before the record existed are int8 U8S8 with 8-bit weights; their needs are inferred
from the export profile they record. CPU flags come from /proc/cpuinfo (Linux x86); elsewhere they are
unknown and nothing is refused. No torch, no onnxruntime here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vae_deploy.runtime.manifest import Manifest

VNNI = ("avx512_vnni", "avx_vnni")  # int32-accumulating int8 dot products: no int16 saturation
FLAG_NAMES = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI"}
CPUINFO = Path("/proc/cpuinfo")


def int8_requirements(activation_type: str, weight_type: str, reduce_range: bool) -> dict[str, Any]:
    """The record for int8 graphs quantized with these settings (the module docstring says why)."""
    name = f"{activation_type[0].upper()}8{weight_type[0].upper()}8".replace("I", "S")  # e.g. U8S8
    saturates = weight_type == "int8" and not reduce_range
    return {"quantization": name, "reduce_range": bool(reduce_range),
            "x86_any_of": list(VNNI) if saturates else []}


def cpu_requirements(manifest: Manifest) -> dict[str, Any]:
    """What the folder's graphs need of the CPU: the manifest's record, or for an int8 folder exported
    before it was recorded, what its export profile's quantization implies; {} for nothing special."""
    if manifest.cpu_requirements or manifest.precision != "int8":
        return dict(manifest.cpu_requirements)
    settings = manifest.export_profile.get("quantization") or {}
    return int8_requirements(settings.get("activation_type", "uint8"), settings.get("weight_type", "int8"),
                             bool(settings.get("reduce_range", False)))


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str] | None:
    """This CPU's feature flags (the `flags` line of /proc/cpuinfo on Linux x86, or of `cpuinfo`); None
    where unknown (other systems, other architectures, whose cpuinfo has no `flags` line)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def _describe(flags: frozenset[str]) -> str:
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx512f" in flags:
        return "AVX-512 without VNNI"
    return "AVX2 only" if "avx2" in flags else "no AVX2"


def cpu_problem(manifest: Manifest, cpuinfo: Path | None = None) -> str | None:
    """Why the folder's graphs cannot hold their parity on this CPU (its flags read from `cpuinfo`, default
    /proc/cpuinfo), or None where they can or where the CPU's flags are unknown."""
    needs = cpu_requirements(manifest)
    any_of = needs.get("x86_any_of") or []
    flags = cpu_flags(cpuinfo) if any_of else None
    if flags is None or any(flag in flags for flag in any_of):
        return None
    bits = "7-bit" if needs.get("reduce_range") else "8-bit"
    return (f"this int8 graph ({needs.get('quantization', 'int8')}, {bits} weights) needs "
            f"{' or '.join(FLAG_NAMES.get(f, f) for f in any_of)} for its parity; this CPU has "
            f"{_describe(flags)} ({', '.join(any_of)} not in {cpuinfo or CPUINFO} flags), where its int8 "
            f"products saturate: re-export the model with this vae-deploy's cpu-int8 profile (7-bit weights, "
            f"which hold on every x86-64 CPU)")
