"""A stand-in for NVIDIA's trtexec, for the plumbing of the trtexec builder (no engine is built)."""
from __future__ import annotations

import stat


def fake_trtexec(tmp_path, body: str):
    """A stand-in for trtexec, for the plumbing only: it prints a banner and does `body`."""
    tool = tmp_path / "bin" / "trtexec"
    tool.parent.mkdir(exist_ok=True)
    tool.write_text("#!/bin/sh\n"
                    'echo "&&&& RUNNING TensorRT.trtexec [TensorRT v101300] # trtexec $*"\n' + body)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(tool)


WRITE_ENGINE = """for arg in "$@"; do
  case "$arg" in
    --saveEngine=*) printf 'plan-bytes' > "${arg#--saveEngine=}" ;;
    --timingCacheFile=*) printf 'cache' >> "${arg#--timingCacheFile=}" ;;
  esac
done
echo "&&&& PASSED TensorRT.trtexec"
"""
