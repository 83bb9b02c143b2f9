"""Pydantic models of a task manifest (tasks/AG-DS-*.yaml) and the project defaults."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from atlas.paths import WeightsChoice, lexical_problem

from atlas.probe import CAPABILITIES

TASK_ID_PATTERN = r"^AG-[A-Z0-9]+-[A-Z0-9]+-\d{3}$"
Capability = Literal[tuple(CAPABILITIES)]  # type: ignore[valid-type]
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(value: Any) -> float:
    """'30m', '1h30m', '90s', '45' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 30m, 1h30m, 90s")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match or not any(match.groups()):
            raise ValueError(f"{value!r} is not a duration (write 90s, 30m, 2h or 1h30m)")
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    if not seconds > 0:                       # also rejects NaN (`.nan` in YAML)
        raise ValueError("a duration must be positive")
    return seconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_ref(value: str) -> str:
    if ":" not in value or not value.split(":", 1)[1]:
        raise ValueError(f"{value!r} is not an input reference (write TASK-ID:output-name)")
    problem = lexical_problem(value.split(":", 1)[1])
    if problem:      # an output is a name inside the producing step's output folder
        raise ValueError(f"input {value!r}: {problem}")
    return value


class InputSpec(Strict):
    """Long form of an input: `{from: TASK:name, optional: true}`."""

    from_: str = Field(alias="from")
    optional: bool = False

    @field_validator("from_")
    @classmethod
    def _ref(cls, value: str) -> str:
        return _check_ref(value)


def _input_form(value: Any) -> str | None:
    if isinstance(value, str):
        return "ref"
    return "spec" if isinstance(value, (dict, InputSpec)) else None


# One error per bad input, located at the input itself (not one per union branch).
Input = Annotated[
    Union[Annotated[Annotated[str, AfterValidator(_check_ref)], Tag("ref")], Annotated[InputSpec, Tag("spec")]],
    Discriminator(_input_form, custom_error_type="input_form",
                  custom_error_message="an input is TASK-ID:output or {from: TASK-ID:output, optional: true}"),
]


# sbatch options atlas sets itself (or that would point Slurm at files outside the
# project): refused in extra_args, where they would silently override what atlas relies on
_OWN_SBATCH = ("--output", "--error", "--input", "-o", "-e", "-i", "--chdir", "-D", "--job-name", "-J",
               "--parsable", "--wrap", "--export", "--array", "-a", "--wait", "-W", "--open-mode",
               "--dependency", "-d", "--test-only")
_SBATCH_ARG = re.compile(r"^--?[A-Za-z][A-Za-z0-9-]*(=[^\0\n]*)?$")
_MEMORY = r"^\d+[KMGT]?$"


def _sbatch_args(values: list[str] | tuple[str, ...]) -> list[str] | tuple[str, ...]:
    for value in values:
        if not _SBATCH_ARG.match(value):
            raise ValueError(f"{value!r} is not an sbatch option: write --name=value (one option per item)")
        name = value.split("=", 1)[0]
        if name in _OWN_SBATCH:
            raise ValueError(f"{name} is set by atlas itself (job name, log, folder, environment); leave it out")
    return values


SbatchArgs = Annotated[list[str], AfterValidator(_sbatch_args)]
SbatchArgTuple = Annotated[tuple[str, ...], AfterValidator(_sbatch_args)]    # the same, frozen


class SlurmResources(Strict):
    """What a step's Slurm job asks for; unset fields come from the step (gpus, timeout)
    and the project's executor block. Frozen (its extra_args a tuple), so that one default
    serves every manifest without a slurm block: pydantic copies no hashable default, and
    making one per manifest was a third of checking it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: int | None = Field(None, ge=1, le=4096, description="--cpus-per-task (default 1)")
    memory: str | None = Field(None, pattern=_MEMORY, description="--mem, e.g. 16G")
    gpus: int | None = Field(None, ge=0, le=64, description="--gpus-per-node (default: the step's gpus)")
    nodes: int = Field(1, ge=1, le=1024, description="--nodes; more than 1 only for DISTRIBUTED")
    time: float | None = Field(None, description="--time (default: the step's timeout)")
    partition: str | None = Field(None, pattern=r"^[A-Za-z0-9_.,-]+$")
    account: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    qos: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    extra_args: SbatchArgTuple = ()

    @field_validator("time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)


_NO_SLURM_BLOCK = SlurmResources()


# Mutable defaults are default_factory, never `= []`: pydantic deep-copies such a default on
# every validation (3 copy.deepcopy calls per manifest, a tenth of checking 2,000 of them).
class Manifest(Strict):
    id: str = Field(pattern=TASK_ID_PATTERN, description="Atlas task ID, e.g. AG-DS-LIBTEST-001")
    title: str = Field(min_length=1, description="original (Turkish) title from the workplan")
    title_en: str = Field(min_length=1, description="English title")
    wbs: str = Field(pattern=r"^\d+(\.\d+)*$", description="work-breakdown number, e.g. 1.2.2.1")
    module: str | None = Field(None, description="module folder of the project this task touches")
    libraries: list[str] = Field(default_factory=list)
    license: str = ""
    description: str = ""
    handler: str = Field(min_length=1, description="step type, an `atlas.handlers` entry point")
    depends_on: list[str] = Field(default_factory=list)
    inputs: dict[str, Input] = Field(
        default_factory=dict, description="name -> TASK-ID:output, or {from: ..., optional: true}")
    requires: list[Capability] = Field(default_factory=list, description="capabilities; unmet -> skipped")
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(None, description="e.g. 30m, 2h, 90s; the step is killed after it")
    retries: int = Field(0, ge=0, le=10)
    gpus: Literal[0, 1, "all"] | None = Field(
        None, description="GPUs a step takes under -j: 0, 1 or all (default: 1 when it requires cuda)")
    slurm: SlurmResources = Field(default=_NO_SLURM_BLOCK, description="the step's Slurm job under --executor slurm")

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    def input_specs(self) -> dict[str, InputSpec]:
        return {name: InputSpec(**{"from": spec}) if isinstance(spec, str) else spec
                for name, spec in self.inputs.items()}

    def input_refs(self) -> dict[str, tuple[str, bool]]:
        """name -> (TASK:output, optional), as plain data (what loading needs, at a tenth
        of the cost of `input_specs`)."""
        return {name: (spec, False) if isinstance(spec, str) else (spec.from_, spec.optional)
                for name, spec in self.inputs.items()}


class WbsNode(Strict):
    wbs: str = Field(pattern=r"^\d+(\.\d+)*$")
    task: str | None = Field(None, description="the Atlas task of a Mikro Görev")
    title: str
    title_en: str = ""
    children: list["WbsNode"] = []


class SyntheticDefaults(Strict):
    """Size of the built-in synthetic X-ray-like set (images per class and split)."""
    train: int = Field(120, ge=2)
    val: int = Field(30, ge=1)
    test: int = Field(30, ge=1)
    seed: int = 0


class DataDefaults(Strict):
    root: str | None = Field(None, description="chest X-ray folder (train/ val/ test/, one folder per class) "
                                               "or a PneumoniaMNIST/ChestMNIST .npz; null = built-in synthetic set")
    classes: list[str] = Field(["NORMAL", "PNEUMONIA"], min_length=2)
    positive_class: str | None = Field(None, description="class that sensitivity/F1/AUC treat as positive; "
                                                         "default: the last class")
    image_size: int = Field(224, ge=16, description="model input size in pixels (square)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="carved from train/ when val/ is missing")
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="unreadable images above this fraction "
                                                                 "of a split fail the step")
    synthetic: SyntheticDefaults = SyntheticDefaults()

    @model_validator(mode="after")
    def _positive_is_a_class(self) -> "DataDefaults":
        if self.positive_class is not None and self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of classes {self.classes}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes repeat a name: {self.classes}")
        return self


class ModelDefaults(Strict):
    arch: str = "resnet50"
    weights: WeightsChoice = Field("imagenet", description="imagenet (error when unavailable), auto (imagenet when "
                                                 "cached or downloadable, else random init, said in the "
                                                 "result), none, or a path to a .pth state_dict")
    freeze_until: str | None = Field("layer3", description="freeze parameters up to and including this "
                                                           "module (e.g. layer3); null trains everything")


class ExecutorDefaults(Strict):
    """Where steps run: `local` (this machine, the default) or `slurm` (one job per step)."""

    kind: Literal["local", "slurm"] = "local"
    partition: str | None = Field(None, pattern=r"^[A-Za-z0-9_.,-]+$")
    account: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    qos: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    extra_args: SbatchArgs = Field(default_factory=list)
    poll: float = Field(0.5, gt=0, le=60, description="seconds between looks at the queue")


class ProjectDefaults(Strict):
    name: str
    title: str = ""
    owner: str = ""
    data: DataDefaults = DataDefaults()
    model: ModelDefaults = ModelDefaults()
    executor: ExecutorDefaults = ExecutorDefaults()
    hierarchy: list[WbsNode] = []

    def wbs_index(self) -> dict[str, WbsNode]:
        index: dict[str, WbsNode] = {}

        def walk(nodes: list[WbsNode]) -> None:
            for node in nodes:
                index[node.wbs] = node
                walk(node.children)

        walk(self.hierarchy)
        return index
