"""The JSON record beside each engine: what built it, where, from which model, and how.

An engine only runs on the TensorRT version and GPU it was built for, so the benchmark
reads these records to know what it is loading, and skips engines whose file does not
match its record.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from atlas.atomic import write_atomically
from handlers.inference.trt.errors import TrtError

_REBUILD = "atlas run AG-DS-TRTENGINE-001 --force"


def engine_name(precision: str) -> str:
    return f"model_{precision}.engine"


def record_name(precision: str) -> str:
    return f"model_{precision}.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class EngineRecord:
    engine: str                  # file name, beside the record
    precision: str
    builder: str                 # "python-api" | "trtexec"
    tensorrt_version: str
    gpu: str
    compute_capability: str
    profile: dict
    build_seconds: float
    size_bytes: int
    onnx: str                    # file name of the model built from
    onnx_sha256: str
    strongly_typed: bool
    builder_flags: list[str] = field(default_factory=list)
    timing_cache: dict = field(default_factory=dict)   # {"path": str, "reused": bool}; {} for TensorRT for RTX
    family: str = "tensorrt"                           # "tensorrt" | "tensorrt-rtx": which runtime loads it
    target_compute_capabilities: list[str] = field(default_factory=list)   # what the engine was built to run on
    layers: dict = field(default_factory=dict)         # the network's layers (handlers.inference.trt.builder)
    created: str = field(default_factory=now_iso)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    def write(self, path: Path) -> None:
        write_atomically(Path(path), self.to_json())

    @classmethod
    def from_dict(cls, data: dict, source: str = "record") -> "EngineRecord":
        if not isinstance(data, dict):
            raise TrtError(f"{source}: expected a JSON object, got {type(data).__name__}", _REBUILD)
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise TrtError(f"{source}: missing {', '.join(missing)}", _REBUILD)
        # keys a newer atlas may add are ignored rather than refused
        return cls(**{name: data[name] for name in names if name in data})

    @classmethod
    def read(cls, path: Path) -> "EngineRecord":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise TrtError(f"engine record {path} not found", _REBUILD) from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrtError(f"engine record {path} is not valid JSON: {exc}", _REBUILD) from exc
        return cls.from_dict(data, source=str(path))


def find_engines(folder: Path) -> tuple[list[tuple[EngineRecord, Path]], list[str]]:
    """Every engine in `folder` whose record reads and whose file has the recorded size,
    with the reason for each one left out."""
    found: list[tuple[EngineRecord, Path]] = []
    problems: list[str] = []
    for record_path in sorted(Path(folder).glob("*.json")):
        try:
            record = EngineRecord.read(record_path)
        except TrtError as exc:
            problems.append(exc.message)
            continue
        engine = record_path.parent / record.engine
        if not engine.is_file():
            problems.append(f"{record_path.name}: engine file {record.engine} is missing")
            continue
        size = engine.stat().st_size
        if size != record.size_bytes:
            problems.append(f"{record_path.name}: {record.engine} is {size} bytes but its record says "
                            f"{record.size_bytes} (an interrupted or foreign build)")
            continue
        found.append((record, engine))
    return found, problems
