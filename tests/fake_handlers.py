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


class PlotParams(Params):
    label: str = "loss"
    epochs: int = 4


class Plot(Handler):
    """Records a curve per epoch and hands the report a chart and a table of it."""

    name = "plot"
    Params = PlotParams
    outputs = ("curve.txt",)

    def run(self, ctx: Context) -> Result:
        from atlas.charts import Chart, Mark, Series, Table

        xs = list(range(1, ctx.params.epochs + 1))
        ys = [1.0 / x for x in xs]
        for x, y in zip(xs, ys):
            ctx.metric("train_loss", y, step=x)
        ctx.figure(Chart(name="curve", title=f"{ctx.params.label} per epoch", x_label="epoch",
                         y_label=ctx.params.label, series=[Series(label=ctx.params.label, x=xs, y=ys)],
                         marks=[Mark(x=xs[-1], label="best epoch")]))
        ctx.figure(Table(name="numbers", title=f"{ctx.params.label} table", columns=["epoch", ctx.params.label],
                         rows=[[x, y] for x, y in zip(xs, ys)]))
        ctx.write_text("curve.txt", " ".join(f"{y:.3f}" for y in ys))
        return Result.succeeded(f"{ctx.params.label}: {ys[-1]:.3f} after {len(xs)} epochs")


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
    child: bool = False          # also start a grandchild process (as a DataLoader worker would)


class Sleep(Handler):
    name = "sleep"
    Params = SleepParams
    outputs = ("partial.txt",)

    def run(self, ctx: Context) -> Result:
        import subprocess

        ctx.write_text("partial.txt", "half-written")
        if ctx.params.child:
            child = subprocess.Popen(["sleep", str(ctx.params.seconds)])
            Path(ctx.project_root, f"child-{ctx.task_id}").write_text(str(child.pid))
        Path(ctx.project_root, f"started-{ctx.task_id}").write_text(str(os.getpid()))
        time.sleep(ctx.params.seconds)
        return Result.succeeded("slept")


class FillParams(Params):
    megabytes: int = 8


class Fill(Handler):
    """Writes a large output (for the full-disk test)."""

    name = "fill"
    Params = FillParams
    outputs = ("big.bin",)

    def run(self, ctx: Context) -> Result:
        with open(ctx.output("big.bin"), "wb") as f:
            for _ in range(ctx.params.megabytes):
                f.write(b"\0" * (1 << 20))
        return Result.succeeded(f"wrote {ctx.params.megabytes} MB")


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


class WhoAmI(Handler):
    """Records what process the step ran in (for the step-starter tests)."""

    name = "whoami"
    outputs = ("who.json",)

    def run(self, ctx: Context) -> Result:
        import random
        import sys

        ctx.write_json("who.json", {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgrp(),
                                    "sid": os.getsid(0), "cwd": os.getcwd(), "env": os.environ.get("ATLAS_TEST_VAR"),
                                    "frameworks": sorted(m for m in ("torch", "numpy", "tensorrt", "cupy")
                                                         if m in sys.modules),
                                    "random": random.random()})
        return Result.succeeded("who")


ALL = (Echo, Plot, Copy, Fail, Sleep, Fill, Crash, Raise, Flaky, NeedsTensorRT, NoOutput, WhichGpu, WhoAmI)
