"""handlers.environment.cuda_setup: a real run on this machine, GPU machines fed in as Facts, the scripts."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from atlas import probe
from atlas.handler import Context
from handlers.environment import cuda_setup
from handlers.environment.cuda_compat import NO_GPU
from handlers.environment.cuda_setup import CudaSetup, Facts, decide, render

TASK = "AG-DS-CUDASETUP-001"
OUTPUTS = ("report.json", "SETUP.md", "install_linux.sh", "install_windows.ps1")

# The seed's machine: Windows, toolkit 13.1, a driver for CUDA 13.0, torch fallen back to cu118.
USER = Facts(
    os="windows", platform="win32", python="3.12.7",
    gpus=[{"index": 0, "name": "NVIDIA GeForce RTX 3060", "memory_mib": 12288,
           "compute_capability": "8.6", "driver": "581.57"}],
    driver_version="581.57", driver_cuda="13.0", driver_cuda_source="nvidia-smi", nvcc="13.1",
    torch_version="2.7.1+cu118", torch_cuda="11.8", torch_cudnn="9.1.0", torch_cuda_available=True,
    torch_arch_list=["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"])

# A Linux server whose driver stops at CUDA 12.4, with no PyTorch yet.
SERVER = Facts(
    os="linux", platform="linux", python="3.12.3",
    gpus=[{"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559,
           "compute_capability": "9.0", "driver": "550.54.14"} for i in range(2)],
    driver_version="550.54.14", driver_cuda="12.4", driver_cuda_source="libcuda", nvcc="12.4")


def make_ctx(tmp_path: Path, events: list | None = None, **params) -> Context:
    return Context(task_id=TASK, params=CudaSetup.Params(**params), inputs={},
                   output_dir=tmp_path / "out", project_root=tmp_path, project={},
                   emit=(events.append if events is not None else (lambda event: None)))


def metrics(events: list) -> dict:
    return {e["name"]: e["value"] for e in events if e["type"] == "metric"}


def bash_syntax_ok(path: Path) -> None:
    out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_handler_declaration():
    assert CudaSetup.name == "cuda_setup"
    assert CudaSetup.outputs == OUTPUTS
    assert CudaSetup.requires == ()
    assert CudaSetup.gpu_env is True
    params = CudaSetup.Params()
    assert (params.channel, params.venv, params.python) == ("auto", "gpu_env", "3.12")
    assert (params.packages, params.extra_packages) == (["torch", "torchvision"], [])


def test_run_on_this_machine(tmp_path):
    result = CudaSetup().run(make_ctx(tmp_path))
    assert result.status == "succeeded", result
    out = tmp_path / "out"
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert os.access(out / "install_linux.sh", os.X_OK)
    bash_syntax_ok(out / "install_linux.sh")
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == TASK and report["choice"]["channel"] in report["channel"]["name"]
    if probe.query_gpus()[0]:
        pytest.skip("this machine has a GPU: the CPU-variant checks below do not apply")
    script = (out / "install_linux.sh").read_text()
    assert "--torch-backend=cpu" in script
    assert NO_GPU in [f["text"] for f in report["findings"]]
    assert f"info: {NO_GPU}" in result.findings
    assert result.message.startswith("channel cpu for no NVIDIA GPU")


def test_without_gpu_the_cpu_variant_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_setup.probe, "query_gpus", lambda: ([], "nvidia-smi not found"))
    events: list = []
    result = CudaSetup().run(make_ctx(tmp_path, events))
    assert result.status == "succeeded"
    assert result.findings[0] == "info: no NVIDIA GPU/driver found: writing the CPU variant"
    out = tmp_path / "out"
    assert "--torch-backend=cpu" in (out / "install_linux.sh").read_text()
    assert "'--torch-backend=cpu'" in (out / "install_windows.ps1").read_text()
    assert "EXPECTED_CUDA=none" in (out / "install_linux.sh").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["choice"]["channel"] == "cpu"
    assert report["facts"]["gpus"] == [] and report["facts"]["nvidia_smi_error"] == "nvidia-smi not found"
    assert metrics(events)["gpu_count"] == 0


def test_users_windows_machine_gets_cu130_and_the_toolkit_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_setup, "detect", lambda: USER)
    events: list = []
    result = CudaSetup().run(make_ctx(tmp_path, events))
    assert result.status == "succeeded"
    assert result.message == ("channel cu130 for 1 GPU (NVIDIA GeForce RTX 3060), driver 581.57, CUDA 13.0; "
                              "0 problem(s); see SETUP.md")
    assert any("CUDA toolkit 13.1 has no PyTorch channel (there is no cu131)" in f for f in result.findings)
    assert any("PyTorch stopped publishing cu118 builds after 2.7" in f for f in result.findings)
    out = tmp_path / "out"
    ps1 = (out / "install_windows.ps1").read_text()
    assert ps1.splitlines()[8] == "param([switch]$Recreate, [switch]$TensorRT)"
    # an RTX card: TensorRT for RTX, for the driver's CUDA 13, offered by both scripts
    assert "Invoke-Checked $Py @('-m', 'uv', 'pip', 'install', '--python', $Py, 'tensorrt-rtx-cu13')" in ps1
    assert any(f.startswith("info: TensorRT: tensorrt-rtx-cu13 (NVIDIA GeForce RTX 3060 (8.6): RTX-class")
               for f in result.findings)
    assert "$ErrorActionPreference = 'Stop'" in ps1
    assert "Invoke-Checked 'py' @('-3.12', '-m', 'venv', $Venv)" in ps1
    assert "$Py = '.\\gpu_env\\Scripts\\python.exe'" in ps1
    assert "$Packages = @('torch', 'torchvision')" in ps1
    assert "'--torch-backend=cu130'" in ps1
    assert "$ExpectedCuda = '13.0'" in ps1
    sh = (out / "install_linux.sh").read_text()
    assert '"$PY" -m uv pip install --python "$PY" torch torchvision --torch-backend=cu130' in sh
    assert '"$PY" -m uv pip install --python "$PY" tensorrt-rtx-cu13' in sh
    assert json.loads((out / "report.json").read_text())["tensorrt"]["family"] == "tensorrt-rtx"
    setup = (out / "SETUP.md").read_text()
    assert setup.startswith("# GPU set-up: PyTorch `cu130`")
    assert "| GPU 0 | NVIDIA GeForce RTX 3060, 12288 MiB, compute capability 8.6 |" in setup
    assert "| CUDA toolkit (nvcc) | 13.1 |" in setup
    assert "Pick the channel by the driver, not the toolkit: cu130 here" in setup
    assert "CUDA 13.x builds >= 580.88 on windows" in setup
    report = json.loads((out / "report.json").read_text())
    assert report["choice"] == {"channel": "cu130", "cuda": "13.0", "compat": "native", "requested": False,
                                "reason": "driver 581.57 supports CUDA 13.0; cu130 (CUDA 13.0) is the newest "
                                          "PyTorch channel it runs natively"}
    assert report["facts"]["nvcc"] == "13.1" and report["channel"]["native_windows"] == "580.88"
    assert metrics(events) == {"gpu_count": 1.0, "gpu_memory_total": 12288.0, "problems": 0.0}


def test_setup_md_troubleshooting_covers_the_seed_errors():
    setup = render(TASK, USER, decide(USER, CudaSetup.Params()), CudaSetup.Params())["SETUP.md"]
    table = setup.split("## Troubleshooting", 1)[1]
    rows = {line.split(" | ")[0].lstrip("| ") : line for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert len(rows) >= 9
    assert any("Access is denied" in k and "Run as administrator" in v and "needs no administrator rights" in v
               for k, v in rows.items())
    assert any("virtual environment is not found" in k and "`python -m venv gpu_env`" in v for k, v in rows.items())
    assert any("e.g. 13.1" in k and "Pick the channel by the driver, not the toolkit: `--torch-backend=cu130`" in v
               for k, v in rows.items())
    assert any("No module named 'tqdm'" in k and "`pip install -r requirements.txt`" in v for k, v in rows.items())


def test_linux_server_with_a_12_4_driver_renders_cu124(tmp_path):
    params = CudaSetup.Params(extra_packages=["tqdm", "scikit-learn>=1.4"])
    decision = decide(SERVER, params)
    assert decision.choice.channel == "cu124"
    texts = render(TASK, SERVER, decision, params)
    script = tmp_path / "install_linux.sh"
    script.write_text(texts["install_linux.sh"])
    bash_syntax_ok(script)
    sh = texts["install_linux.sh"]
    assert "torch torchvision tqdm 'scikit-learn>=1.4' --torch-backend=cu124" in sh
    assert "EXPECTED_CUDA=12.4" in sh and "command -v python3.12 || command -v python3" in sh
    assert "$Packages = @('torch', 'torchvision', 'tqdm', 'scikit-learn>=1.4')" in texts["install_windows.ps1"]
    assert "PyTorch stopped publishing cu124 builds after 2.6" in texts["SETUP.md"]
    assert "| GPU 1 | NVIDIA H100 80GB HBM3, 81559 MiB, compute capability 9.0 |" in texts["SETUP.md"]


def test_forced_channel_is_kept_and_flagged(tmp_path):
    params = CudaSetup.Params(channel="cu130")
    decision = decide(SERVER, params)
    assert (decision.choice.channel, decision.choice.compat) == ("cu130", "unsupported")
    assert any(f.level == "problem" and "the requested channel cu130 (CUDA 13.0) does not run" in f.text
               for f in decision.findings)
    assert "--torch-backend=cu130" in render(TASK, SERVER, decision, params)["install_linux.sh"]


def test_broken_torch_and_broken_driver_are_findings():
    facts = replace(USER, torch_error="OSError: [WinError 126] error loading fbgemm.dll",
                    torch_cuda_available=None, torch_arch_list=[])
    problem = [f for f in decide(facts, CudaSetup.Params()).findings if f.level == "problem"]
    assert problem[0].text == "PyTorch is installed but failed: OSError: [WinError 126] error loading fbgemm.dll"
    smi = "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    broken = Facts(os="linux", nvidia_smi_error=smi)
    findings = decide(broken, CudaSetup.Params()).findings
    assert findings[0].level == "problem" and findings[0].text.startswith(smi)
    assert str(findings[1]) == f"info: {NO_GPU}"


def test_detect_falls_back_to_the_nvidia_smi_banner(monkeypatch):
    gpu = probe.Gpu(0, "NVIDIA GeForce RTX 3060", 12288, "8.6", "581.57")
    monkeypatch.setattr(cuda_setup.probe, "query_gpus", lambda: ([gpu], None))
    monkeypatch.setattr(cuda_setup.probe, "cuda_driver_version", lambda: None)
    monkeypatch.setattr(cuda_setup, "_smi_banner", lambda: BANNER)
    monkeypatch.setattr(cuda_setup, "inspect_torch", lambda: {})
    facts = cuda_setup.detect()
    assert (facts.driver_version, facts.driver_cuda, facts.driver_cuda_source) == ("581.57", "13.0", "nvidia-smi")
    assert facts.gpus[0]["compute_capability"] == "8.6"


BANNER = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 581.57                 Driver Version: 581.57         CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
"""


def test_small_parsers():
    assert cuda_setup.parse_smi_cuda(BANNER) == "13.0"
    assert cuda_setup.parse_smi_cuda("no banner") is None
    assert cuda_setup.format_cudnn(90100) == "9.1.0"
    assert cuda_setup.format_cudnn(91002) == "9.10.2"
    assert cuda_setup.format_cudnn(8700) == "8.7.0"
    assert cuda_setup.format_cudnn(None) is None
    assert cuda_setup.host_os("win32") == "windows" and cuda_setup.host_os("linux") == "linux"


@pytest.mark.parametrize("field, value, message", [
    ("channel", "cu131", "unknown channel 'cu131': use auto or one of cpu, cu118"),
    ("venv", "../env", "must be a plain folder name"),
    ("python", "3.12; rm -rf /", "must look like 3.12"),
    ("packages", ["torch; rm -rf /"], "is not a plain requirement"),
    ("extra_packages", ["$(whoami)"], "is not a plain requirement"),
])
def test_params_reject_what_would_break_the_scripts(field, value, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        CudaSetup.Params(**{field: value})


def test_unwritable_output_folder_fails_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_setup, "detect", lambda: SERVER)
    (tmp_path / "out").write_text("a file where the output folder should be")
    result = CudaSetup().run(make_ctx(tmp_path))
    assert result.status == "failed"
    assert result.message.startswith(f"cannot write the set-up kit to {tmp_path / 'out'}")
    assert result.hint == "check that the output folder is writable and the disk is not full"


def test_no_package_index_host_is_written_anywhere():
    here = Path(cuda_setup.__file__).parent
    sources = [here / "cuda_setup.py", here / "cuda_compat.py", *sorted((here / "templates").glob("cuda_setup_*.j2"))]
    rendered = [*render(TASK, USER, decide(USER, CudaSetup.Params()), CudaSetup.Params()).values(),
                *render(TASK, SERVER, decide(SERVER, CudaSetup.Params()), CudaSetup.Params()).values()]
    host = re.compile(r"://|index-url|\b[\w-]+\.(?:org|com|dev|io|net)\b")
    for text in [p.read_text() for p in sources] + rendered:
        assert not host.search(text), host.search(text)


def test_powershell_script_is_ascii_and_parses_where_pwsh_exists(tmp_path):
    ps1 = render(TASK, USER, decide(USER, CudaSetup.Params()), CudaSetup.Params())["install_windows.ps1"]
    ps1.encode("ascii")  # Windows PowerShell 5.1 reads BOM-less scripts as ANSI
    if shutil.which("pwsh") is None:
        pytest.skip("pwsh not installed: content checks only")
    path = tmp_path / "install_windows.ps1"
    path.write_text(ps1)
    command = ("$errors = $null; [System.Management.Automation.Language.Parser]::ParseFile("
               f"'{path}', [ref]$null, [ref]$errors) | Out-Null; if ($errors) {{ $errors; exit 1 }}")
    out = subprocess.run(["pwsh", "-NoProfile", "-Command", command], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _stub_environment(tmp_path: Path, torch_cuda: str | None) -> dict:
    """A venv whose python fakes pip/uv and whose torch is a stub: runs the script offline."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        f"__version__ = '2.9.0+{'cpu' if torch_cuda is None else 'cu' + torch_cuda.replace('.', '')}'\n"
        "from . import cuda, version\n")
    (fake / "torch" / "version.py").write_text(f"cuda = {torch_cuda!r}\n")
    (fake / "torch" / "cuda.py").write_text("def is_available():\n    return False\n")
    bin_dir = tmp_path / "work" / "gpu_env" / "bin"
    bin_dir.mkdir(parents=True)
    stub = bin_dir / "python"
    stub.write_text('#!/usr/bin/env bash\n'
                    'if [ "$1" = "-m" ] && { [ "$2" = "pip" ] || [ "$2" = "uv" ]; }; then\n'
                    '    echo "$*" >> "$STUB_LOG"; exit 0\nfi\n'
                    f'exec {sys.executable} "$@"\n')
    stub.chmod(0o755)
    return {**os.environ, "PYTHONPATH": str(fake), "STUB_LOG": str(tmp_path / "calls.log")}


def test_generated_linux_script_runs_end_to_end_offline(tmp_path):
    no_gpu = Facts(os="linux", nvidia_smi_error="nvidia-smi not found")
    params = CudaSetup.Params()
    script = tmp_path / "work" / "install_linux.sh"
    env = _stub_environment(tmp_path, torch_cuda=None)
    script.write_text(render(TASK, no_gpu, decide(no_gpu, params), params)["install_linux.sh"])
    (tmp_path / "work" / "requirements.txt").write_text("tqdm\n")
    out = subprocess.run(["bash", str(script)], cwd=script.parent, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reusing gpu_env (run with --recreate for a fresh one)" in out.stdout
    assert "2.9.0+cpu None False" in out.stdout
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls == ["-m pip install --upgrade pip uv",
                     "-m uv pip install --python gpu_env/bin/python torch torchvision --torch-backend=cpu",
                     "-m uv pip install --python gpu_env/bin/python -r requirements.txt --torch-backend=cpu"]


def test_generated_linux_script_fails_when_the_build_is_not_the_expected_one(tmp_path):
    params = CudaSetup.Params()
    script = tmp_path / "work" / "install_linux.sh"
    env = _stub_environment(tmp_path, torch_cuda=None)  # a CPU torch where cu130 was wanted
    script.write_text(render(TASK, USER, decide(USER, params), params)["install_linux.sh"])
    out = subprocess.run(["bash", str(script)], cwd=script.parent, env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert "expected a CUDA 13.0 build that sees the GPU" in out.stderr
    assert "run again with --recreate" in out.stderr
