"""Steps as Slurm jobs (`atlas run --executor slurm`): one batch job per step attempt.

The job runs the same worker as a local step (`atlas.worker.main`) on the allocated node,
in the project folder, which the nodes must share. With no pipe between runner and node,
the worker appends its events (metrics, figures, the result) to a file in the project and
Slurm appends its stdout/stderr to another; the runner reads both as they grow, as it reads
the pipes of a local step. Slurm's own CLI does the rest (sbatch, squeue, scontrol,
scancel): one `squeue` call per poll covers every job of the run.

No manifest string reaches a shell: the batch script is a Python file atlas writes (its
only variable text is the spec path, as a JSON string literal), sbatch gets an argument
list, and the options a project may add are checked by atlas.manifest.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from atlas.process import ProcessResult, ProcessTable, StepSinks
from atlas.state import hostname
from atlas.tail import FileTail

FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT", "GONE"})
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel")
SLURM_HINT = ("install Slurm's client commands and point them at the cluster (Debian: apt-get install "
              "slurm-client; a test cluster: apt-get install slurm-wlm munge, then .ci/slurm-cluster start), "
              "or run with --executor local")
# a local filesystem seen by one machine only: a cluster's other nodes cannot see the project
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "vfat"})


class SlurmError(Exception):
    def __init__(self, message: str, hint: str = SLURM_HINT) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def missing() -> str | None:
    """Why the Slurm executor cannot run here; None when it can."""
    absent = [c for c in COMMANDS if shutil.which(c) is None]
    if absent:
        return f"{', '.join(absent)} not found on PATH"
    return None


@dataclass
class JobInfo:
    """What Slurm says of one job; times are Unix seconds."""

    job_id: str
    state: str = "PENDING"
    node: str = ""
    reason: str = ""
    exit_code: str = ""
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    events_seen: bool = False      # the worker wrote to the project folder (it is shared)

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def as_dict(self) -> dict:
        return asdict(self)          # the store derives queue wait and run time from the times


def _when(text: str) -> float | None:
    if not text or text in ("N/A", "None", "Unknown", "(null)"):
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"{args[0]} did not answer: {exc}") from None


def _scontrol_fields(text: str) -> dict[str, str]:
    fields = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value
    return fields


class SlurmQueue:
    """The run's jobs: submitted, watched with one squeue call per poll, cancelled."""

    SQUEUE_FORMAT = "%i|%T|%N|%r|%V|%S|%e"

    def __init__(self, poll_s: float = 0.5) -> None:
        self.poll_s = poll_s
        self.jobs: dict[str, JobInfo] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.thread: threading.Thread | None = None
        self.closed = False

    # -- submission and cancelling ---------------------------------------------------------
    def submit(self, options: list[str], script: Path, env: dict[str, str]) -> JobInfo:
        done = _run(["sbatch", "--parsable", *options, str(script)], env=env)
        if done.returncode != 0:
            raise SlurmError(f"sbatch refused the job: {(done.stderr or done.stdout).strip()}",
                             "check the partition, account, qos and resources of the step and of the "
                             "executor block in tasks/project.yaml")
        job_id = done.stdout.strip().split(";")[0]
        return self.watch(job_id, submitted=time.time())

    def watch(self, job_id: str, submitted: float | None = None) -> JobInfo:
        with self.lock:
            info = self.jobs.setdefault(job_id, JobInfo(job_id, submitted=submitted))
            if self.thread is None:
                self.thread = threading.Thread(target=self._monitor, name="atlas-slurm", daemon=True)
                self.thread.start()
            self.changed.notify_all()
        return info

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            _run(["scancel", *job_ids])

    def check(self, job_id: str) -> JobInfo:
        """What Slurm says of a job now (one query), without following it."""
        with self.lock:
            info = self.jobs.setdefault(job_id, JobInfo(job_id))
        self.refresh([job_id])
        return info

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()

    # -- watching ----------------------------------------------------------------------------
    def wait_change(self, info: JobInfo, timeout: float) -> None:
        with self.lock:
            if not info.final:
                self.changed.wait(timeout)

    def _monitor(self) -> None:
        while True:
            with self.lock:
                while not self.closed and all(i.final for i in self.jobs.values()):
                    self.changed.wait()
                if self.closed:
                    return
                ids = [j for j, i in self.jobs.items() if not i.final]
            try:
                self.refresh(ids)
            except SlurmError:
                pass                                  # the controller is busy: ask again next poll
            time.sleep(self.poll_s)

    def refresh(self, ids: list[str]) -> None:
        """One squeue call for every live job; scontrol for the few that just ended (their
        exit code and Slurm's reason) or that squeue no longer lists."""
        done = _run(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", self.SQUEUE_FORMAT])
        seen: dict[str, list[str]] = {}
        if done.returncode == 0:
            for line in done.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 7:
                    seen[parts[0]] = parts
        updates: dict[str, dict] = {}
        for job_id in ids:
            parts = seen.get(job_id)
            if parts is not None:
                update = {"state": parts[1].split()[0], "node": parts[2] if parts[2] not in ("", "(null)") else "",
                          "reason": parts[3] if parts[3] not in ("None", "(null)") else "",
                          "submitted": _when(parts[4]), "started": _when(parts[5]), "ended": _when(parts[6])}
                if update["state"] in FINAL:
                    update |= self._details(job_id)
            else:
                update = self._details(job_id) or {"state": "GONE", "reason": "Slurm no longer knows the job"}
            updates[job_id] = update
        with self.lock:
            for job_id, update in updates.items():
                info = self.jobs[job_id]
                for key, value in update.items():
                    if value not in (None, "") or key == "state":
                        setattr(info, key, value)
                if info.state == "RUNNING" and info.started is None:
                    info.started = time.time()
            self.changed.notify_all()

    def _details(self, job_id: str) -> dict:
        done = _run(["scontrol", "show", "job", "-o", job_id])
        if done.returncode != 0 or "JobState=" not in done.stdout:
            return {}
        f = _scontrol_fields(done.stdout)
        reason = f.get("Reason", "")
        return {"state": f.get("JobState", "GONE"), "node": f.get("BatchHost") or f.get("NodeList", ""),
                "reason": "" if reason in ("None", "(null)") else reason, "exit_code": f.get("ExitCode", ""),
                "submitted": _when(f.get("SubmitTime", "")), "started": _when(f.get("StartTime", "")),
                "ended": _when(f.get("EndTime", ""))}


# --- one step as one job ------------------------------------------------------------------

JOB_SCRIPT = '''#!{python}
# written by atlas: the step {task}, run by the same worker as a local step
import sys

from atlas.worker import main

sys.exit(main({spec}))
'''


def _time_option(seconds: float) -> str:
    """--time as minutes:seconds (Slurm rounds its checks to about half a minute)."""
    total = max(1, int(-(-seconds // 1)))
    return f"{total // 60}:{total % 60:02d}"


def sbatch_options(task: str, resources, defaults, gpus: int | str, timeout: float | None,
                   log: Path, cwd: Path) -> list[str]:
    """The argument list of sbatch for one step (no shell, no manifest text unchecked)."""
    options = [f"--job-name=atlas-{task}", f"--output={log}", "--open-mode=append", f"--chdir={cwd}",
               "--export=ALL", f"--nodes={resources.nodes}", "--ntasks-per-node=1",
               f"--cpus-per-task={resources.cpus or 1}"]
    for name, value in (("partition", resources.partition or defaults.partition),
                        ("account", resources.account or defaults.account),
                        ("qos", resources.qos or defaults.qos)):
        if value:
            options.append(f"--{name}={value}")
    if resources.memory:
        options.append(f"--mem={resources.memory}")
    want = resources.gpus if resources.gpus is not None else gpus
    if want == "all":                    # every GPU of the node: the whole node
        options.append("--exclusive")
    elif want:
        options.append(f"--gpus-per-node={int(want)}")
    limit = resources.time or timeout
    if limit:
        options.append(f"--time={_time_option(limit)}")
    return options + list(defaults.extra_args) + list(resources.extra_args)


class SlurmJob:
    """A step's job in the run's process table: Ctrl-C cancels it with scancel."""

    def __init__(self, queue: SlurmQueue, info: JobInfo) -> None:
        self.queue, self.info = queue, info

    def cancel(self) -> None:
        if not self.info.final:
            self.queue.cancel([self.info.job_id])


def job_files(job_dir: Path) -> dict[str, Path]:
    return {"spec": job_dir / "spec.json", "script": job_dir / "job.py", "log": job_dir / "log.txt",
            "events": job_dir / "events.jsonl"}


def run_step_job(spec: dict, job_dir: Path, *, options: list[str], cwd: Path, env: dict[str, str],
                 timeout: float | None, on_event: Callable[[dict], None], on_log: Callable[[str], None],
                 table: ProcessTable, queue: SlurmQueue, on_submit: Callable[[JobInfo], None],
                 adopt: str | None = None) -> ProcessResult:
    """Submit the step (or take over `adopt`, a job a killed runner left), follow its log
    and events until Slurm reports an end state, and return what a local step returns."""
    files = job_files(job_dir)
    sinks = StepSinks(on_event, on_log)
    if adopt is None:
        job_dir.mkdir(parents=True, exist_ok=True)
        files["spec"].write_text(json.dumps(dict(spec, events_path=str(files["events"]))))
        files["script"].write_text(JOB_SCRIPT.format(python=sys.executable, task=spec["task"],
                                                     spec=json.dumps(str(files["spec"]))))
        try:
            info = queue.submit(options, files["script"], env)
        except SlurmError as exc:          # refused: a failed attempt with Slurm's words, not a crash
            return ProcessResult({"status": "failed", "message": exc.message, "hint": exc.hint}, None)
    else:
        info = queue.watch(adopt)
    job = SlurmJob(queue, info)
    table.add(job)
    on_submit(info)
    tails = [FileTail(files["log"], sinks.log), FileTail(files["events"], sinks.event)]
    # a backstop only: Slurm enforces --time itself (checking about every 30 s)
    deadline = time.monotonic() + timeout + 300 if timeout else None
    cancelled = timed_out = False
    try:
        while not info.final:
            queue.wait_change(info, queue.poll_s)
            for tail in tails:
                tail.read()
            if table.cancelled.is_set() and not cancelled:
                cancelled = True
                job.cancel()
            if deadline is not None and time.monotonic() > deadline and not timed_out:
                timed_out = True
                job.cancel()
    finally:
        table.remove(job)
    # a shared filesystem may show the last lines a moment after the job ended
    grace = time.monotonic() + (5.0 if info.state == "COMPLETED" else 1.0)
    while True:
        for tail in tails:
            tail.read()
        if sinks.result or time.monotonic() > grace:
            break
        time.sleep(0.1)
    for tail in tails:
        tail.read(final=True)
    info.events_seen = files["events"].exists()
    code = None
    if info.exit_code and ":" in info.exit_code:
        status, _, signal_no = info.exit_code.partition(":")
        code = -int(signal_no) if signal_no not in ("0", "") else int(status)
    return ProcessResult(sinks.result or None, code, timed_out or info.state in ("TIMEOUT", "DEADLINE"),
                         cancelled or table.cancelled.is_set(), sinks.lines, job=info)


def failure_message(info: JobInfo, events_seen: bool, task: str, file: str) -> tuple[str, str]:
    """A step whose job ended without a result: Slurm's own words, and what to do."""
    where = f"Slurm job {info.job_id}" + (f" on {info.node}" if info.node else "")
    reason = f" ({info.reason})" if info.reason else ""
    code = f", exit code {info.exit_code}" if info.exit_code not in ("", "0:0") else ""
    message = f"{where} ended {info.state}{reason}{code}"
    if info.state in ("TIMEOUT", "DEADLINE"):
        return message, f"raise `timeout:` (or `slurm.time`) in {file}"
    if info.state in ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL"):
        return message, f"not the step's fault: `retries:` in {file} re-submits it"
    if info.state == "OUT_OF_MEMORY":
        return message, f"ask for more memory: `slurm: {{memory: 32G}}` in {file}"
    if info.state == "CANCELLED":
        return message, "someone (or Slurm) cancelled the job: scancel, a reservation, an admin"
    if not events_seen:
        return (message + "; the worker left no trace in the project folder",
                "the project folder must be on a filesystem every node shares (NFS, Lustre, GPFS); "
                f"see the job's log: atlas show {task}")
    return message, f"see the step's log: atlas show {task}"


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path` (longest mount point in /proc/mounts)."""
    best, kind = "", ""
    target = str(path.resolve())
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) >= 3:
                    point = parts[1].replace("\\040", " ")
                    if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                        best, kind = point, parts[2]
    except OSError:
        return ""
    return kind


def shared_folder_warning(root: Path, partition: str | None) -> str | None:
    """A warning when the partition has nodes other than this machine and the project sits
    on a filesystem only this machine sees."""
    args = ["sinfo", "-h", "-o", "%n"] + ([f"--partition={partition}"] if partition else [])
    try:
        done = _run(args, timeout=30)
    except SlurmError:
        return None
    nodes = {n.strip() for n in done.stdout.split() if n.strip()}
    name = hostname()
    here = {name, name.split(".")[0]}
    others = nodes - here
    kind = filesystem_of(root)
    if others and kind in LOCAL_FILESYSTEMS:
        return (f"the project folder {root} is on a local {kind} filesystem, but the partition has other "
                f"nodes ({', '.join(sorted(others)[:3])}{', …' if len(others) > 3 else ''}): jobs there will not "
                "find it. Put the project on a filesystem every node mounts (NFS, Lustre, GPFS).")
    return None


def environment(base: dict[str, str]) -> dict[str, str]:
    """sbatch's environment: the step's, without the local GPU choice (Slurm sets its own)."""
    env = dict(base)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def has_result(events: Path) -> bool:
    try:
        return '"type": "result"' in events.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def remove_job_dir(job_dir: Path) -> None:
    shutil.rmtree(job_dir, ignore_errors=True)

