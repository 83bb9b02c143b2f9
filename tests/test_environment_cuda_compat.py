"""handlers.environment.cuda_compat: channel choice and findings on many driver/toolkit/torch combinations."""
from __future__ import annotations

import pytest

from handlers.environment import cuda_compat as cc
from handlers.environment.cuda_compat import check_fit, pick_channel


def texts(findings, level=None):
    return [str(f) for f in findings if level is None or f.level == level]


def one(findings, needle, level=None):
    """The single finding whose text contains `needle` (asserting there is exactly one)."""
    hits = [f for f in findings if needle in f.text and (level is None or f.level == level)]
    assert len(hits) == 1, f"{needle!r} in {texts(findings)}"
    return hits[0]


# -- the table --------------------------------------------------------------------------

def test_channel_names_match_their_cuda_version():
    for channel in cc.GPU_CHANNELS:
        assert channel.name == "cu" + channel.cuda.replace(".", "")
    assert [c.name for c in cc.GPU_CHANNELS] == ["cu118", "cu121", "cu124", "cu126", "cu128", "cu129", "cu130", "cu132"]
    assert cc.CHANNELS["cpu"].cuda is None


def test_family_floors_are_nvidias_minor_version_minimums():
    assert cc.family_floor("11.8", "linux") == "450.80.02"
    assert cc.family_floor("11.8", "windows") == "452.39"
    assert cc.family_floor("12.6", "linux") == "525.60.13"
    assert cc.family_floor("12.6", "windows") == "527.41"
    assert cc.family_floor("13.0", "linux") == "580.65.06"
    assert cc.family_floor("13.0", "windows") == "580.88"
    assert cc.family_floor("10.2", "linux") is None


@pytest.mark.parametrize("text, expected", [
    ("580.65.06", (580, 65, 6)), ("452.39", (452, 39)), ("13.1", (13, 1)), ("V13.0.88", (13, 0, 88)),
    ("", None), (None, None),
])
def test_parse_version(text, expected):
    assert cc.parse_version(text) == expected


@pytest.mark.parametrize("driver, os, cuda", [
    ("560.94", "windows", "12.6"), ("550.54.14", "linux", "12.4"), ("580.95.05", "linux", "13.0"),
    ("595.58.03", "linux", "13.2"), ("452.39", "windows", None), ("581.57", "windows", "13.0"),
])
def test_driver_cuda_from_driver_version(driver, os, cuda):
    assert cc.driver_cuda_from_version(driver, os) == cuda


# -- pick_channel -------------------------------------------------------------------------

def test_users_machine_driver_13_picks_cu130():
    choice = pick_channel("13.0", "581.57", "windows")
    assert (choice.channel, choice.cuda, choice.compat) == ("cu130", "13.0", "native")
    assert choice.reason == ("driver 581.57 supports CUDA 13.0; cu130 (CUDA 13.0) is the newest "
                             "PyTorch channel it runs natively")


def test_driver_13_1_still_picks_cu130_not_cu132():
    # cu132 would run only through minor-version compatibility; native wins.
    assert pick_channel("13.1", "590.44.01", "linux").channel == "cu130"


def test_driver_13_2_picks_cu132():
    choice = pick_channel("13.2", "595.45.04", "linux")
    assert (choice.channel, choice.compat) == ("cu132", "native")


def test_driver_supporting_only_12_4_picks_cu124_and_says_it_is_retired():
    choice = pick_channel("12.4", "550.54.14", "linux")
    assert (choice.channel, choice.compat) == ("cu124", "native")
    assert "supports CUDA 12.4; cu124 (CUDA 12.4) is the newest PyTorch channel it runs natively" in choice.reason
    assert "PyTorch stopped publishing cu124 builds after 2.6; a newer driver unlocks current releases" in choice.reason


def test_driver_12_9_prefers_a_channel_pytorch_still_publishes():
    choice = pick_channel("12.9", "575.57.08", "linux")
    assert choice.channel == "cu126"
    assert choice.reason == ("driver 575.57.08 supports CUDA 12.9; cu126 (CUDA 12.6) is the channel it runs "
                             "natively with the newest PyTorch releases (cu129 ended with 2.8, cu128 ended with 2.11)")


def test_among_retired_channels_of_one_major_the_longer_lived_wins():
    # Blackwell rules out cu126 on an R575 driver: cu128 (up to 2.11) beats cu129 (up to 2.8).
    choice = pick_channel("12.9", "575.57.08", "linux", ["12.0"])
    assert choice.channel == "cu128"
    assert "(cu129 ended with 2.8)" in choice.reason
    assert "PyTorch stopped publishing cu128 builds after 2.11" in choice.reason


def test_old_windows_driver_452_39_runs_cu118_through_minor_version_compatibility():
    choice = pick_channel(None, "452.39", "windows")
    assert (choice.channel, choice.compat) == ("cu118", "minor-version")
    assert "CUDA minor-version compatibility runs CUDA 11.x builds on drivers >= 452.39 (windows), so cu118" in choice.reason
    assert "PyTorch stopped publishing cu118 builds after 2.7" in choice.reason
    assert pick_channel("11.0", "452.39", "windows").channel == "cu118"


def test_windows_driver_below_the_cuda_11_floor_gets_cpu():
    choice = pick_channel("11.0", "451.48", "windows")
    assert choice.channel == "cpu"
    assert "older than every PyTorch CUDA channel (cu118 needs >= 452.39 on windows)" in choice.reason


def test_no_driver_picks_cpu():
    choice = pick_channel(None, None, "linux")
    assert (choice.channel, choice.cuda, choice.compat) == ("cpu", None, "cpu")
    assert choice.reason == "no NVIDIA driver found: the CPU build is the only one that runs here"


def test_windows_13_x_floor_is_580_88():
    assert pick_channel("13.0", "580.88", "windows").channel == "cu130"
    # A driver claiming CUDA 13.0 below the Windows floor cannot run CUDA 13 builds.
    assert pick_channel("13.0", "580.70", "windows").channel == "cu126"


def test_pascal_gpu_on_a_new_driver_skips_channels_without_its_kernels():
    choice = pick_channel("13.0", "580.95.05", "linux", ["6.1"])
    assert choice.channel == "cu126"
    assert "Left out cu132, cu130, cu129, cu128: no kernels for compute capability 6.1" in choice.reason


def test_blackwell_gpu_on_a_12_8_driver_needs_cu128():
    choice = pick_channel("12.8", "570.124.06", "linux", ["12.0"])
    assert choice.channel == "cu128"
    assert "Left out cu126, cu124, cu121, cu118" in choice.reason


def test_no_channel_with_kernels_for_the_gpu_gives_cpu_with_the_reason():
    choice = pick_channel(None, "452.39", "windows", ["12.0"])
    assert choice.channel == "cpu"
    assert choice.reason == ("driver 452.39 was found, but no channel that runs on it has kernels for compute "
                             "capability 12.0: CPU build until the driver is updated")


def test_forced_channel_records_how_it_runs():
    forced = cc.force_channel("cu128", "13.0", "580.95.05", "linux")
    assert (forced.channel, forced.compat, forced.requested) == ("cu128", "native", True)
    assert forced.reason == "requested in params (auto would pick cu130)"
    assert cc.force_channel("cu130", "12.4", "550.54.14", "linux").compat == "unsupported"
    assert cc.force_channel("cpu", None, None, "linux").compat == "cpu"


# -- check_fit ----------------------------------------------------------------------------

def test_users_case_toolkit_13_1_with_cu118_torch_on_a_13_0_driver():
    findings = check_fit(os="windows", driver_version="581.57", driver_cuda="13.0",
                         gpus=[("NVIDIA GeForce RTX 3060", "8.6")], nvcc="13.1",
                         torch_version="2.7.1+cu118", torch_cuda="11.8", torch_cuda_available=True)
    toolkit = one(findings, "CUDA toolkit 13.1", "info")
    assert "has no PyTorch channel (there is no cu131)" in toolkit.text
    assert "bundle their own CUDA runtime and cuDNN, so only the driver must be new enough" in toolkit.text
    assert "Pick the channel by the driver, not the toolkit: cu130 here" in toolkit.text
    torch = one(findings, "PyTorch 2.7.1+cu118", "info")
    assert "runs on this driver (driver 581.57, CUDA 13.0), but the driver could run cu130 (CUDA 13.0)" in torch.text
    assert "PyTorch stopped publishing cu118 builds after 2.7" in torch.text
    assert torch.fix == "reinstall with --torch-backend=cu130 for current PyTorch releases."
    assert not texts(findings, "problem")


def test_toolkit_newer_than_any_channel():
    findings = check_fit(os="linux", driver_version="600.10", driver_cuda="14.0", nvcc="14.0")
    toolkit = one(findings, "CUDA toolkit 14.0")
    assert "is newer than any PyTorch channel (newest: cu132, CUDA 13.2)" in toolkit.text
    assert "Pick the channel by the driver, not the toolkit: cu132 here" in toolkit.text


def test_toolkit_differs_from_torch_cuda_is_not_a_problem():
    findings = check_fit(os="linux", driver_version="570.124.06", driver_cuda="12.8", nvcc="12.1",
                         torch_version="2.11.0+cu128", torch_cuda="12.8", torch_cuda_available=True)
    toolkit = one(findings, "CUDA toolkit 12.1 differs from PyTorch's CUDA 12.8: not a problem.", "info")
    assert "torch.utils.cpp_extension wants the same CUDA major." in toolkit.text
    one(findings, "PyTorch 2.11.0+cu128 (CUDA 12.8) fits the driver (driver 570.124.06, CUDA 12.8).", "ok")
    assert not texts(findings, "problem") and not texts(findings, "warning")


def test_toolkit_of_another_major_says_which_to_install_for_extensions():
    findings = check_fit(os="linux", driver_version="580.95.05", driver_cuda="13.0", nvcc="12.6",
                         torch_version="2.9.0+cu130", torch_cuda="13.0")
    assert "(install a CUDA 13.x toolkit for that)" in one(findings, "CUDA toolkit 12.6 differs").text


def test_toolkit_newer_than_the_driver_warns_about_own_kernels_only():
    findings = check_fit(os="linux", driver_version="550.54.14", driver_cuda="12.4", nvcc="13.1")
    warning = one(findings, "is newer than the driver's CUDA 12.4", "warning")
    assert "programs compiled with this nvcc will not run until the driver is updated (PyTorch wheels are unaffected)" in warning.text
    assert warning.fix == "update the driver to >= 580.65.06."


def test_no_toolkit_is_fine():
    findings = check_fit(os="linux", driver_version="580.95.05", driver_cuda="13.0")
    assert "PyTorch wheels do not need one" in one(findings, "no CUDA toolkit (nvcc) on PATH", "info").text


def test_torch_built_for_newer_cuda_than_the_driver_is_a_problem_with_fix():
    findings = check_fit(os="linux", driver_version="550.54.14", driver_cuda="12.4",
                         torch_version="2.9.0+cu130", torch_cuda="13.0", torch_cuda_available=False)
    problem = one(findings, "PyTorch 2.9.0+cu130 was built for CUDA 13.0", "problem")
    assert "newer than this driver supports (driver 550.54.14, CUDA 12.4)" in problem.text
    assert "'The NVIDIA driver on your system is too old'" in problem.text
    assert problem.fix == "reinstall with --torch-backend=cu124, or update the driver to >= 580.65.06."
    # The generic "is_available() is False" problem is not repeated on top of the cause.
    assert len(texts(findings, "problem")) == 1


def test_torch_newer_minor_than_driver_runs_with_a_warning():
    findings = check_fit(os="linux", driver_version="550.54.14", driver_cuda="12.4",
                         torch_version="2.11.0+cu128", torch_cuda="12.8", torch_cuda_available=True)
    warning = one(findings, "PyTorch 2.11.0+cu128 (CUDA 12.8) is newer than the driver's CUDA", "warning")
    assert "runs through CUDA minor-version compatibility" in warning.text
    assert warning.fix == "cu124 matches the driver natively, or update the driver."


def test_cpu_only_torch_on_a_gpu_machine_is_a_problem_with_fix():
    findings = check_fit(os="linux", driver_version="580.95.05", driver_cuda="13.0",
                         gpus=[("NVIDIA GeForce RTX 4090", "8.9")],
                         torch_version="2.9.0+cpu", torch_cuda=None, torch_cuda_available=False)
    problem = one(findings, "is a CPU-only build", "problem")
    assert problem.text == ("PyTorch 2.9.0+cpu is a CPU-only build, but this machine has an NVIDIA GPU "
                            "(NVIDIA GeForce RTX 4090): torch.cuda.is_available() is False.")
    assert "uv pip install torch --torch-backend=cu130" in problem.fix
    assert "A fresh venv keeps the CPU build from being reused." in problem.fix


def test_no_gpu_writes_the_cpu_variant():
    findings = check_fit(os="linux", driver_version=None, driver_cuda=None)
    assert str(findings[0]) == "info: no NVIDIA GPU/driver found: writing the CPU variant"
    one(findings, "PyTorch is not installed in this Python environment; the generated install scripts set up the cpu build.")


def test_cuda_torch_without_gpu_is_only_information():
    findings = check_fit(os="linux", driver_version=None, driver_cuda=None,
                         torch_version="2.15.0+cu132", torch_cuda="13.2", torch_cuda_available=False)
    info = one(findings, "was built for CUDA 13.2, but there is no NVIDIA driver here: it runs on the CPU.", "info")
    assert info.fix == "the cpu channel is a much smaller download."
    assert not texts(findings, "problem")


def test_driver_too_old_for_any_channel_is_a_problem():
    findings = check_fit(os="linux", driver_version="440.33", driver_cuda="10.2")
    problem = one(findings, "no PyTorch CUDA build runs here", "problem")
    assert problem.fix == ("update the NVIDIA driver (>= 450.80.02 for cu118, "
                           ">= 580.65.06 for current CUDA 13 builds).")


def test_gpu_not_covered_by_the_installed_build():
    findings = check_fit(os="linux", driver_version="575.57.08", driver_cuda="12.9",
                         gpus=[("NVIDIA GeForce RTX 5090", "12.0")],
                         torch_version="2.6.0+cu126", torch_cuda="12.6", torch_cuda_available=True,
                         torch_arch_list=["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"])
    problem = one(findings, "NVIDIA GeForce RTX 5090 (compute capability 12.0) is not covered", "problem")
    assert "'no kernel image is available for execution on the device'" in problem.text
    assert "--torch-backend=cu128" in problem.fix


def test_gpu_coverage_falls_back_to_the_table_without_an_arch_list():
    findings = check_fit(os="linux", driver_version="580.95.05", driver_cuda="13.0",
                         gpus=[("NVIDIA GeForce GTX 1080", "6.1")],
                         torch_version="2.9.0+cu130", torch_cuda="13.0")
    problem = one(findings, "NVIDIA GeForce GTX 1080 (compute capability 6.1) is not covered", "problem")
    assert "(compute capability 7.5 to 12.0)" in problem.text
    assert "--torch-backend=cu126" in problem.fix


@pytest.mark.parametrize("cc_, arch_list, expected", [
    ("8.9", ["sm_80", "sm_86", "sm_90"], True),      # same major, older minor runs
    ("8.6", ["sm_80", "sm_86"], True),
    ("12.0", ["sm_90", "sm_100", "sm_120"], True),
    ("12.0", ["sm_80", "sm_90"], False),
    ("12.0", ["sm_80", "compute_90"], True),         # PTX JIT-compiles forward
    ("7.0", ["sm_75", "sm_80"], False),
])
def test_arch_list_coverage(cc_, arch_list, expected):
    assert cc._arch_ok(cc_, arch_list) is expected


def test_torch_that_fits_but_sees_no_gpu():
    findings = check_fit(os="linux", driver_version="580.95.05", driver_cuda="13.0",
                         gpus=[("NVIDIA H100 80GB HBM3", "9.0")],
                         torch_version="2.9.0+cu130", torch_cuda="13.0", torch_cuda_available=False)
    problem = one(findings, "torch.cuda.is_available() is False although PyTorch 2.9.0+cu130", "problem")
    assert "CUDA_VISIBLE_DEVICES" in problem.fix


def test_forced_channel_the_driver_cannot_run_is_a_problem():
    choice = cc.force_channel("cu130", "12.4", "550.54.14", "linux")
    findings = check_fit(os="linux", driver_version="550.54.14", driver_cuda="12.4", choice=choice)
    problem = one(findings, "the requested channel cu130 (CUDA 13.0) does not run on driver 550.54.14 (CUDA 12.4)", "problem")
    assert problem.fix == "use channel: auto (cu124) or update the driver to >= 580.65.06."


def test_python_newer_than_a_retired_channel_supports():
    problem = cc.check_python("cu121", "3.13")
    assert problem.level == "problem"
    assert problem.text == ("PyTorch stopped publishing cu121 builds after 2.5, which supports Python up to 3.12: "
                            "there is no cu121 wheel for Python 3.13 ('No matching distribution found').")
    assert problem.fix.startswith('set python: "3.12"')
    assert cc.check_python("cu121", "3.12") is None
    assert cc.check_python("cu130", "3.14") is None
    assert cc.check_python("cpu", "3.14") is None


def test_finding_str_carries_level_and_fix():
    finding = cc.Finding("problem", "broken.", "fix it.")
    assert str(finding) == "problem: broken. Fix: fix it."
    assert str(cc.Finding("ok", "fine.")) == "ok: fine."


# ------------------------------------------------------------------ which TensorRT

@pytest.mark.parametrize("gpus, driver_cuda, family, package", [
    ([("NVIDIA GeForce RTX 3060", "8.6")], "13.0", "tensorrt-rtx", "tensorrt-rtx-cu13"),
    ([("NVIDIA GeForce RTX 4090", "8.9")], "12.8", "tensorrt-rtx", "tensorrt-rtx-cu12"),
    ([("NVIDIA RTX PRO 6000 Blackwell", "12.0")], "13.0", "tensorrt-rtx", "tensorrt-rtx-cu13"),
    ([("NVIDIA H200", "9.0")], "13.0", "tensorrt", "tensorrt-cu13"),
    ([("NVIDIA A100-SXM4-80GB", "8.0")], "12.4", "tensorrt", "tensorrt-cu12"),
    ([("NVIDIA L4", "8.9")], "13.0", "tensorrt", "tensorrt-cu13"),                  # data-centre Ada
    ([("NVIDIA GeForce RTX 2080", "7.5")], "13.0", "tensorrt", "tensorrt-cu13"),    # Turing: not in TRT-RTX 1.7
    ([("NVIDIA GeForce RTX 4090", "8.9"), ("NVIDIA H100", "9.0")], "13.0", "tensorrt", "tensorrt-cu13"),
    ([], None, "tensorrt-rtx", "tensorrt-rtx-cu13"),
])
def test_tensorrt_follows_the_gpu_class(gpus, driver_cuda, family, package):
    from handlers.environment.tensorrt_choice import choose_tensorrt
    choice = choose_tensorrt(gpus, driver_cuda)
    assert (choice.family, choice.package) == (family, package)
    assert choice.reason
