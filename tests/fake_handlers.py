"""Small handlers for engine tests. They run in real step processes (the worker imports
this module through the PYTHONPATH the runner passes on), so keep them importable."""
from __future__ import annotations

import os
import time
from pathlib import Path

from atlas.handler import Context, Handler, Params, Result


class EchoParams(Params):
    text: str = "hello"


class Echo(Handler):
    name = "echo"
    Params = EchoParams
    outputs = ("out.txt",)

    def run(self, ctx: Context) -> Result:
        ctx.write_text("out.txt", ctx.params.text)
        ctx.metric("chars", len(ctx.params.text), "chars")
        with ctx.progress(3, "echo") as bar:
            for _ in range(3):
                bar.advance()
        ctx.log.info("wrote %d chars", len(ctx.params.text))
        return Result.succeeded(f"wrote {len(ctx.params.text)} chars", findings=["echo finding"])


class Copy(Handler):
    """Reads its `src` input (optional) and copies it."""

    name = "copy"
    outputs = ("copy.txt",)

    def run(self, ctx: Context) -> Result:
        src = ctx.inputs.get("src")
        text = src.read_text() if src else "<no input>"
        ctx.write_text("copy.txt", text)
        return Result.succeeded(f"copied {len(text)} chars")


class Fail(Handler):
    name = "fail"

    def run(self, ctx: Context) -> Result:
        ctx.write_text("partial.txt", "half")
        return Result.failed("boom: the step failed on purpose", "fix the fake handler")


class SleepParams(Params):
    seconds: float = 30.0


class Sleep(Handler):
    name = "sleep"
    Params = SleepParams

    def run(self, ctx: Context) -> Result:
        Path(ctx.project_root, f"started-{ctx.task_id}").write_text(str(os.getpid()))
        time.sleep(ctx.params.seconds)
        return Result.succeeded("slept")


class Crash(Handler):
    name = "crash"

    def run(self, ctx: Context) -> Result:
        os._exit(3)


class Raise(Handler):
    name = "raise"

    def run(self, ctx: Context) -> Result:
        raise RuntimeError("handler blew up")


class Flaky(Handler):
    """Fails on its first attempt, succeeds on the second (for retries)."""

    name = "flaky"

    def run(self, ctx: Context) -> Result:
        marker = ctx.project_root / "flaky-attempted"
        if not marker.exists():
            marker.write_text("1")
            return Result.failed("first attempt fails")
        return Result.succeeded("second attempt works")


class NeedsTensorRT(Handler):
    """Needs a capability no test machine has (TensorFlow): a step the planner must skip."""
    name = "needs_trt"
    requires = ("tensorflow",)
    outputs = ("engine.bin",)

    def run(self, ctx: Context) -> Result:  # only reached where TensorFlow exists
        return Result.succeeded("ran")


class NoOutput(Handler):
    """Declares an output it never writes: the runner must fail it."""

    name = "no_output"
    outputs = ("promised.txt",)

    def run(self, ctx: Context) -> Result:
        return Result.succeeded("forgot to write")




class WhichGpu(Handler):
    """Records which GPU the runner gave the step (for the -j GPU-assignment test)."""

    name = "which_gpu"
    outputs = ("gpu.json",)
    gpu_env = True

    def run(self, ctx: Context) -> Result:
        import torch

        props = torch.cuda.get_device_properties(0)
        ctx.write_json("gpu.json", {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                    "devices": ctx.devices, "visible_count": torch.cuda.device_count(),
                                    "uuid": str(props.uuid), "name": props.name})
        # hold the GPU a moment so that both steps of the test overlap
        x = torch.randn(4096, 4096, device="cuda")
        for _ in range(200):
            x = torch.tanh(x @ x.T / 4096)
        torch.cuda.synchronize()
        time.sleep(2)
        return Result.succeeded(f"ran on {props.name}")


ALL = (Echo, Copy, Fail, Sleep, Crash, Raise, Flaky, NeedsTensorRT, NoOutput, WhichGpu)
