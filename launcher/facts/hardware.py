"""Accelerator peaks for MFU: dense (non-sparse) tensor throughput by dtype, and board power.

Numbers are the vendors' published *dense* figures (NVIDIA quotes "with sparsity" numbers that
are 2x these; we halve them where only the sparse figure is printed). ``fp32`` is the
non-tensor-core FP32 peak: PyTorch keeps ``torch.backends.cuda.matmul.allow_tf32`` off by
default, so an fp32 job runs plain FP32 matmuls; ``tf32`` is listed for jobs that turn it on.
``None`` means the chip has no such tensor path (V100: no bf16/tf32).

MFU against an unknown chip is never invented: :func:`match_accelerator` returns ``None`` for
CPUs and unknown names and the report says "MFU: n/a (peak of <device> unknown)". (On a CPU the
report takes MFU against the matrix rate launcher.prepare.probe measured on it, labelled so.)

The plan's forecast (:mod:`launcher.plan.forecast`) also reads its *assumptions* here, each with
its source: the MFU a fine-tune reaches per GPU kind (:data:`MFU_ASSUMPTIONS`), the GPU's power
while training (its board power), the host link (PCIe) and the host's power per node
(:data:`HOST`). ``launcher plan --calibrate RUN_DIR`` replaces the MFU and power assumptions
with what an earlier run measured.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class Accelerator:
    key: str  # our stable id, e.g. "H100-SXM"
    name: str  # human name
    bf16: Optional[float]  # dense TFLOP/s
    fp16: Optional[float]
    tf32: Optional[float]
    fp32: Optional[float]
    tdp_w: float  # board power (TDP / max TGP) in watts
    source: str
    note: str = ""
    host_link_gb_s: float = 32.0  # host <-> GPU, GB/s per direction, nominal (PCIe generation x16)

    def peak_tflops(self, dtype: str) -> Optional[float]:
        """Dense peak TFLOP/s for a job dtype (bf16, fp16, fp32, tf32)."""
        d = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32"}.get(dtype, dtype)
        if d not in ("bf16", "fp16", "tf32", "fp32"):
            return None
        return getattr(self, d)

    def to_dict(self) -> dict:
        return asdict(self)


_A10_NOTE = ("NVIDIA publishes no A10G datasheet; AWS describes it as an A10 variant, so the A10 "
             "datasheet's tensor figures are used (some sources list a lower tensor rate): MFU is approximate")

ACCELERATORS: dict[str, Accelerator] = {a.key: a for a in [
    # NVIDIA H100 Tensor Core GPU datasheet (Hopper), SXM5 column; sparse figures halved.
    Accelerator("H100-SXM", "NVIDIA H100 SXM", bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9,
                tdp_w=700, source="NVIDIA H100 Tensor Core GPU datasheet (SXM)", host_link_gb_s=64.0),
    # Same datasheet, PCIe column.
    Accelerator("H100-PCIE", "NVIDIA H100 PCIe", bf16=756.5, fp16=756.5, tf32=378.0, fp32=51.2,
                tdp_w=350, source="NVIDIA H100 Tensor Core GPU datasheet (PCIe)", host_link_gb_s=64.0),
    # Same datasheet, H100 NVL column (per GPU).
    Accelerator("H100-NVL", "NVIDIA H100 NVL", bf16=835.5, fp16=835.5, tf32=417.5, fp32=60.0,
                tdp_w=400, source="NVIDIA H100 Tensor Core GPU datasheet (NVL)", host_link_gb_s=64.0),
    # NVIDIA H200 Tensor Core GPU datasheet, SXM column (same compute as H100 SXM).
    Accelerator("H200-SXM", "NVIDIA H200 SXM", bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9,
                tdp_w=700, source="NVIDIA H200 Tensor Core GPU datasheet (SXM)", host_link_gb_s=64.0),
    # Same datasheet, H200 NVL column.
    Accelerator("H200-NVL", "NVIDIA H200 NVL", bf16=835.5, fp16=835.5, tf32=417.5, fp32=60.0,
                tdp_w=600, source="NVIDIA H200 Tensor Core GPU datasheet (NVL)", host_link_gb_s=64.0),
    # NVIDIA A100 Tensor Core GPU datasheet: same compute for every A100; power by form factor.
    Accelerator("A100-SXM-40GB", "NVIDIA A100 SXM4 40GB", bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5,
                tdp_w=400, source="NVIDIA A100 Tensor Core GPU datasheet (SXM)"),
    Accelerator("A100-SXM-80GB", "NVIDIA A100 SXM4 80GB", bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5,
                tdp_w=400, source="NVIDIA A100 Tensor Core GPU datasheet (SXM)"),
    Accelerator("A100-PCIE-40GB", "NVIDIA A100 PCIe 40GB", bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5,
                tdp_w=250, source="NVIDIA A100 Tensor Core GPU datasheet (PCIe)"),
    Accelerator("A100-PCIE-80GB", "NVIDIA A100 PCIe 80GB", bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5,
                tdp_w=300, source="NVIDIA A100 Tensor Core GPU datasheet (PCIe)"),
    # NVIDIA L40S datasheet (Ada); sparse figures halved.
    Accelerator("L40S", "NVIDIA L40S", bf16=362.05, fp16=362.05, tf32=183.0, fp32=91.6,
                tdp_w=350, source="NVIDIA L40S datasheet"),
    # NVIDIA A10 datasheet; A10G board power as nvidia-smi reports it on AWS g5 instances.
    Accelerator("A10G", "NVIDIA A10G", bf16=125.0, fp16=125.0, tf32=62.5, fp32=31.2,
                tdp_w=300, source="NVIDIA A10 Tensor Core GPU datasheet (A10G: AWS g5)", note=_A10_NOTE),
    Accelerator("A10", "NVIDIA A10", bf16=125.0, fp16=125.0, tf32=62.5, fp32=31.2,
                tdp_w=150, source="NVIDIA A10 Tensor Core GPU datasheet"),
    # NVIDIA L4 Tensor Core GPU datasheet; sparse figures halved.
    Accelerator("L4", "NVIDIA L4", bf16=121.0, fp16=121.0, tf32=60.0, fp32=30.3,
                tdp_w=72, source="NVIDIA L4 Tensor Core GPU datasheet"),
    # NVIDIA V100 Tensor Core GPU datasheet: fp16 tensor cores only (no bf16, no tf32).
    Accelerator("V100-SXM2", "NVIDIA V100 SXM2", bf16=None, fp16=125.0, tf32=None, fp32=15.7,
                tdp_w=300, source="NVIDIA V100 Tensor Core GPU datasheet (SXM2)", host_link_gb_s=16.0),
    Accelerator("V100-PCIE", "NVIDIA V100 PCIe", bf16=None, fp16=112.0, tf32=None, fp32=14.0,
                tdp_w=250, source="NVIDIA V100 Tensor Core GPU datasheet (PCIe)", host_link_gb_s=16.0),
    Accelerator("V100S-PCIE", "NVIDIA V100S PCIe", bf16=None, fp16=130.0, tf32=None, fp32=16.4,
                tdp_w=250, source="NVIDIA V100S datasheet (PCIe)", host_link_gb_s=16.0),
    # NVIDIA Ada Lovelace GPU architecture whitepaper, GeForce RTX 4090 column: FP16/BF16 tensor
    # with FP32 accumulate (what PyTorch uses), dense.
    Accelerator("RTX-4090", "NVIDIA GeForce RTX 4090", bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6,
                tdp_w=450, source="NVIDIA Ada Lovelace architecture whitepaper (RTX 4090, FP32 accumulate)"),
    # AMD Instinct MI300X data sheet (dense matrix figures).
    Accelerator("MI300X", "AMD Instinct MI300X", bf16=1307.4, fp16=1307.4, tf32=653.7, fp32=163.4,
                tdp_w=750, source="AMD Instinct MI300X accelerator data sheet", host_link_gb_s=64.0),
    # NVIDIA HGX B200 datasheet (8-GPU figures / 8, sparse figures halved).
    Accelerator("B200", "NVIDIA B200", bf16=2250.0, fp16=2250.0, tf32=1100.0, fp32=75.0,
                tdp_w=1000, source="NVIDIA HGX B200 datasheet (per GPU)", host_link_gb_s=64.0),
]}


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


def match_accelerator(name: Optional[str]) -> Optional[Accelerator]:
    """The table entry for a device name, or ``None`` (CPU, unknown chip, empty).

    Accepts ``torch.cuda.get_device_name()`` strings ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe",
    "NVIDIA A100-SXM4-80GB", "Tesla V100-SXM2-16GB", "AMD Instinct MI300X"), our keys ("H100-SXM")
    and short forms ("h100", "a100 80gb"). Matching is on whole tokens, so "L40S" is never "L4"
    and "A100" never "A10".
    """
    if not name:
        return None
    if name.strip().upper() in ACCELERATORS:
        return ACCELERATORS[name.strip().upper()]
    toks = _tokens(name)
    t = set(toks)
    joined = "".join(toks)
    if t & {"cpu"} or not t:
        return None
    A = ACCELERATORS

    def has(*xs: str) -> bool:
        return any(x in t for x in xs)

    if has("h100"):
        if has("pcie"):
            return A["H100-PCIE"]
        if has("nvl"):
            return A["H100-NVL"]
        return A["H100-SXM"]  # "NVIDIA H100 80GB HBM3", "H100 SXM5", "h100"
    if has("h200"):
        return A["H200-NVL"] if has("nvl") else A["H200-SXM"]
    if has("a100"):
        if has("pcie"):
            return A["A100-PCIE-80GB"] if has("80gb") else A["A100-PCIE-40GB"]
        return A["A100-SXM-40GB"] if has("40gb") else A["A100-SXM-80GB"]
    if has("l40s"):
        return A["L40S"]
    if has("a10g"):
        return A["A10G"]
    if has("a10"):
        return A["A10"]
    if has("l4"):
        return A["L4"]
    if has("v100s"):
        return A["V100S-PCIE"]
    if has("v100"):
        return A["V100-PCIE"] if has("pcie") else A["V100-SXM2"]
    if has("4090") or "rtx4090" in joined:
        return A["RTX-4090"]
    if has("mi300x"):
        return A["MI300X"]
    if has("b200"):
        return A["B200"]
    return None


# --------------------------------------------------------------------------- forecast assumptions


@dataclass(frozen=True)
class Assumption:
    value: float
    source: str


_LLAMA3 = ("Llama 3 report (Dubey et al. 2024, Table 4): 38-43% BF16 MFU on 8,192-16,384 H100; "
           "the lower end, since a fine-tune of a Hugging Face model is rarely better tuned")
_A100 = ("Megatron-LM (Narayanan et al. 2021, Table 1): 44-52% of peak on A100; PyTorch FSDP blog "
         "(IBM/Meta 2024, 'Maximizing training throughput using PyTorch FSDP'): 57% for Llama 2 7B on "
         "128 A100; rounded down to 0.45 for a Hugging Face fine-tune")
_V100 = ("ZeRO paper (Rajbhandari et al. 2020): ZeRO-100B sustains 15 PFLOP/s on 400 V100, 38 TFLOP/s per GPU "
         "(30% of 125)")
_NONE = "no published large-scale figure checked here: a guess; calibrate with --calibrate RUN_DIR"

#: Model FLOPs utilisation a fine-tune is assumed to reach, per accelerator key: the share of the
#: dense peak spent on the FLOPs the GPU executes (activation checkpointing's recompute is
#: charged on top by the forecast, see launcher.plan.forecast).
MFU_ASSUMPTIONS: dict[str, Assumption] = {
    **{k: Assumption(0.38, _LLAMA3) for k in ("H100-SXM", "H100-PCIE", "H100-NVL", "H200-SXM", "H200-NVL")},
    "B200": Assumption(0.38, "assumed equal to H100's (" + _LLAMA3 + "); " + _NONE),
    **{k: Assumption(0.45, _A100) for k in ("A100-SXM-40GB", "A100-SXM-80GB", "A100-PCIE-40GB", "A100-PCIE-80GB")},
    **{k: Assumption(0.30, _V100) for k in ("V100-SXM2", "V100-PCIE", "V100S-PCIE")},
    **{k: Assumption(0.30, _NONE) for k in ("L40S", "A10G", "A10", "L4", "RTX-4090", "MI300X")},
}

#: While training, a GPU is assumed to draw its board power (TDP): an upper bound, the way
#: BLOOM's footprint was estimated (Luccioni et al. 2023, JMLR 24(253)).
GPU_POWER_SHARE = Assumption(1.0, "board power (TDP) while training, as in Luccioni et al. 2023 (BLOOM's "
                                  "footprint); an upper bound")


@dataclass(frozen=True)
class HostAssumptions:
    """A GPU node's host, for energy and for offload time (per node)."""

    cpu_w: float
    cpu_source: str
    ram_w: float
    ram_source: str
    cpu_adam_params_per_s: float  # parameters updated per second by the CPU optimizer (whole node)
    cpu_adam_source: str
    nvme_gb_s: float  # NVMe bandwidth per node, GB/s (read or write)
    nvme_source: str


HOST = HostAssumptions(
    # DGX H100: 2 x Xeon Platinum 8480C (350 W TDP each). CodeCarbon's estimate for a machine
    # without RAPL: TDP x (0.1 + 0.9 x load^3), here at an assumed 50% load.
    cpu_w=2 * 350 * (0.1 + 0.9 * 0.5 ** 3),
    cpu_source="2 x 350 W TDP (DGX H100's two Xeon 8480C) x CodeCarbon's load model 0.1 + 0.9 x load^3 at 50% load",
    # CodeCarbon 3.x RAM model (external/ram.py): 2 TiB -> 16 DIMMs -> 5 W x (4 + 0.9 x 4 + 0.8 x 8) = 70 W
    ram_w=70.0,
    ram_source="CodeCarbon's RAM model (5 W per x86 DIMM, decreasing with count) for 2 TiB (DGX H100): 16 DIMMs = 70 W",
    cpu_adam_params_per_s=1.0e9,
    cpu_adam_source=("assumed 1e9 parameters/s per node for DeepSpeedCPUAdam (AVX-512, all cores); "
                     "ZeRO-Offload (Ren et al. 2021) reports CPU-Adam several times faster than PyTorch's; an "
                     "order of magnitude, calibrate"),
    nvme_gb_s=6.0,
    nvme_source="assumed 6 GB/s per node (one or two PCIe Gen4 NVMe drives); ZeRO-Infinity needs it measured",
)

#: A CPU job's model FLOPs over the matrix throughput its ranks measured (launcher.prepare.probe):
#: small models spend much of a step outside large matrix products (the optimizer, norms, the
#: collectives, Python).
CPU_MFU = Assumption(0.3, "the median of launcher's runs on a 2-core AMD EPYC: 20-54% of the measured matmul rate "
                          "for models of 0.3-4M parameters, ZeRO 0-3, FSDP2, LoRA and full (bench/forecast_accuracy.py); "
                          "calibrate")


def cpu_model_name() -> str:
    """This machine's CPU as the kernel names it (``model name`` in /proc/cpuinfo: the CPUID brand
    string), "cpu" where there is none. The start record, the CPU probe and the energy child all
    use it, so a calibration point and a probe match the CPU a run reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return "cpu"


def codecarbon_cpu_watts(tdp_w: float, load: float) -> float:
    """The CPU power CodeCarbon reports without RAPL, tracking the whole machine: its TDP x
    (0.1 + 0.9 x load^3), load in [0, 1] (codecarbon/external/hardware.py, cpu_load mode)."""
    load = min(max(load, 0.0), 1.0)
    return tdp_w * (0.1 + 0.9 * load ** 3)


HOST_LINK_EFFICIENCY = Assumption(
    0.8, "share of the nominal PCIe bandwidth a pinned copy reaches (PCIe protocol overhead)")


def mfu_assumption(accel: Optional[Accelerator]) -> Optional[Assumption]:
    return MFU_ASSUMPTIONS.get(accel.key) if accel else None
