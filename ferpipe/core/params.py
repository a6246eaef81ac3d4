"""`params.yaml`: its schema, and the only place where its values are checked.

One pydantic model per section; every stage loads and validates the whole file when it starts and
then reads typed values (`params.train.lr`). A typo (`train.lrr`), a value of the wrong type, out
of range, not finite or not among the allowed choices, a key written twice, or an output path that
would overwrite something else stops the stage before it writes anything, with one line per
problem naming the file, the key, the bad value and what is allowed. Each list of choices is
defined here once; the modules that act on a choice take it as given.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ferpipe.core.errors import ParamsError, shorten
from ferpipe.core.outputs import output_conflicts

DEFAULT_PARAMS = Path("params.yaml")

# --------------------------------------------------------------------------- choices (defined once)

Arch = Literal["resnet18", "small_cnn"]
Stem = Literal["standard", "3x3", "3x3_nopool", "3x3_double"]
Optimizer = Literal["adamw", "sgd"]
AmpMode = Literal["auto", "bf16", "fp16", "none"]
ClassWeights = Literal["none", "inverse_frequency"]
TtaMode = Literal["none", "hflip", "ten_crop"]
Scheduler = Literal["one_cycle", "plateau"]

#: ResNet18 stems (see `ferpipe.model.network.build_model`).
STEMS: tuple[str, ...] = get_args(Stem)
AMP_MODES: tuple[str, ...] = get_args(AmpMode)
#: Test-time augmentation modes (see `ferpipe.model.inference.tta_views`).
TTA_MODES: tuple[str, ...] = get_args(TtaMode)

#: The largest seed: numpy and scikit-learn take seeds in 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def _number(value: Any) -> Any:
    """Refuse booleans where a number is expected; read YAML 1.1's `1e-3` (a string) as a float."""
    if isinstance(value, bool):
        raise ValueError("input should be a number, not a boolean")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError("input should be a valid number") from None
    return value


Float = Annotated[float, BeforeValidator(_number)]
Int = Annotated[int, Strict()]
Probability = Annotated[Float, Field(ge=0, le=1)]
Fraction = Annotated[Float, Field(gt=0, lt=1)]
Positive = Annotated[Float, Field(gt=0)]
NonNegative = Annotated[Float, Field(ge=0)]
Count = Annotated[Int, Field(ge=1)]
Seed = Annotated[Int, Field(ge=0, le=MAX_SEED)]
Path_ = Annotated[str, Field(min_length=1)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]
Bool = Annotated[bool, Strict()]
#: `train.compile`: on/off, `auto`, or a torch.compile mode (which turns it on).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CompileSetting = Bool | Literal["auto", "default", "reduce-overhead", "max-autotune",
                                "max-autotune-no-cudagraphs"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Download(_Section):
    source: Path_
    local_archive: Path_
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    out: Path_
    max_unpacked_mb: Positive
    max_members: Count


class Prepare(_Section):
    raw: Path_
    out: Path_
    val_fraction: Fraction
    seed: Seed
    image_size: Annotated[Int, Field(ge=8, le=1024)]
    max_bad_fraction: Probability
    drop_test_overlap: Bool
    drop_duplicates: Bool
    drop_uniform: Bool
    uniform_std: NonNegative


class Stats(_Section):
    train: Path_
    out: Path_


class Model(_Section):
    arch: Arch
    stem: Stem
    pretrained: Bool
    freeze: Annotated[Int, Field(ge=0, le=5)]
    hidden: Annotated[Int, Field(ge=0)]
    dropout: Annotated[Float, Field(ge=0, lt=1)]

    @field_validator("pretrained", "freeze")
    @classmethod
    def _resnet18_only(cls, value: Any, info: ValidationInfo) -> Any:
        """`pretrained` and `freeze` act on ResNet18's ImageNet weights and stages: refused (one
        line naming the key) when set with `arch: small_cnn`."""
        if info.data.get("arch") == "small_cnn" and value:
            what = ("has no ImageNet weights" if info.field_name == "pretrained"
                    else "has no ResNet stages to freeze")
            expected = "false" if info.field_name == "pretrained" else "0"
            raise ValueError(f"model.arch 'small_cnn' {what} (resnet18 only); expected {expected}")
        return value


class Augment(_Section):
    autoaugment: Bool
    hflip: Probability
    rotation: Annotated[Float, Field(ge=0, le=180)]
    translate: Annotated[Float, Field(ge=0, lt=1)]
    scale: Annotated[Float, Field(ge=0, lt=1)]
    brightness: Annotated[Float, Field(ge=0, lt=1)]
    contrast: Annotated[Float, Field(ge=0, lt=1)]
    erasing: Probability
    crop: Annotated[Int, Field(ge=8, le=1024)]
    mixup_alpha: NonNegative
    cutmix_alpha: NonNegative
    mix_prob: Probability
    #: Share of the last epochs trained on the clean distribution: crop and flip only (rotation,
    #: translation, zoom, brightness, contrast, erasing and AutoAugment off); 0: off.
    clean_last: Annotated[Float, Field(ge=0, lt=1)] = 0.0


class Train(_Section):
    data: Path_
    stats: Path_
    out: Path_
    experiment: Annotated[str, Field(min_length=1)]
    lr: Positive
    backbone_lr_scale: Annotated[Float, Field(gt=0, le=1)]
    epochs: Count
    batch_size: Count
    optimizer: Optimizer
    momentum: Annotated[Float, Field(ge=0, lt=1)]
    weight_decay: NonNegative
    pct_start: Fraction
    grad_clip: NonNegative
    label_smoothing: Annotated[Float, Field(ge=0, lt=1)]
    ema_decay: Annotated[Float, Field(ge=0, lt=1)]
    scheduler: Scheduler
    plateau_patience: Annotated[Int, Field(ge=0)]
    plateau_factor: Fraction
    class_weights: ClassWeights
    seed: Seed
    device: Device
    amp: AmpMode
    channels_last: Bool
    fused: Bool = True
    compile: CompileSetting
    launcher: Annotated[str, Field(min_length=1)]
    resume: Bool
    #: A file of per-image teacher probabilities for the train split (`python -m
    #: ferpipe.tools.teacher`), or None; `distill_weight` of the target comes from it.
    teacher: Path_ | None = None
    distill_weight: Probability = 0.0


class Evaluate(_Section):
    test: Path_
    val: Path_
    model: Path_
    run: Path_
    batch_size: Count
    device: Device
    tta: TtaMode
    tta_crop: Annotated[Int, Field(ge=8, le=1024)] | None = None
    logit_adjustment: NonNegative
    registry: Bool
    registry_name: Annotated[str, Field(min_length=1)]
    registry_alias: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]
    #: Labelled photo folders (DIR/<class>/<photo>) also scored through the predict path.
    external: tuple[Path_, ...] = ()


class Plot(_Section):
    test: Path_
    run: Path_
    out: Path_
    grid: Path_
    grid_images: Annotated[Int, Field(ge=1, le=400)]
    seed: Seed


class Params(_Section):
    download: Download
    prepare: Prepare
    stats: Stats
    model: Model
    augment: Augment
    train: Train
    evaluate: Evaluate
    plot: Plot


# --------------------------------------------------------------------------- reading


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    """One line for one pydantic error: the dotted key, the bad value, and what is allowed."""
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc)
    if len(key) > 60 or not key.isprintable():  # an unknown key is the user's text too
        key = shorten(key, 60)
    got = shorten(err.get("input"))
    if err["type"] == "extra_forbidden":
        owner: Any = model
        for part in loc[:-1]:
            owner = owner.model_fields[part].annotation
        allowed = ", ".join(owner.model_fields)
        where = f"key in section '{'.'.join(loc[:-1])}'" if len(loc) > 1 else "section"
        return f"{key}: unknown {where} (a typo?); allowed: {allowed}"
    if err["type"] == "string_pattern_mismatch" and loc[-1] == "device":
        return f"{key}: got {got}; expected auto, cpu, mps, cuda or cuda:<index>"
    if err["type"] == "string_pattern_mismatch" and loc[-1] == "sha256":
        return f"{key}: got {got}; expected null or 64 hexadecimal digits"
    if err["type"] == "string_pattern_mismatch" and loc[-1] == "registry_alias":
        return (f"{key}: got {got}; expected a name of letters, digits, _ and - "
                f"(an MLflow model alias, e.g. candidate)")
    if err["type"] == "missing":
        return f"{key}: missing (required)"
    if err["type"] == "model_type":
        return f"{key}: got {got}; expected a section (a mapping of keys to values)"
    message = err["msg"].removeprefix("Value error, ")
    return f"{key}: got {got}; {message[0].lower()}{message[1:]}"


def validate_params(raw: Any, path: str | Path = DEFAULT_PARAMS) -> Params:
    """Check a parsed params mapping against the schema.

    Returns:
        The typed params (`params.train.lr` ...), numbers converted (`"1e-3"`, which YAML reads
        as a string, becomes 0.001).

    Raises:
        ParamsError: one line per problem, `<file>: <section>.<key>: got <value>; <what is
            allowed>` (values longer than 80 characters are cut).
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError("\n".join(f"{path}: {_describe(e, Params)}" for e in err.errors())
                          ) from None
    problems = output_conflicts(*stage_outputs_of(params, path))
    for key, size in (("evaluate.tta_crop", params.evaluate.tta_crop),
                      ("augment.crop", params.augment.crop)):
        if size is not None and size > params.prepare.image_size:
            problems.append(f"{key}: got {size}; expected at most prepare.image_size = "
                            f"{params.prepare.image_size} pixels")
    if problems:
        raise ParamsError("\n".join(f"{path}: {line}" for line in problems))
    return params


#: Outputs whose paths are fixed (not params), by stage.
FIXED_OUTPUTS = {
    "download": ["metrics/raw.json"],
    "prepare": ["metrics/data.json", "metrics/quality.json", "metrics/bad_files.csv"],
    "train": ["metrics/train.json", "metrics/history.csv", "metrics/lr.csv"],
    "evaluate": ["metrics/summary.json", "metrics/eval.json", "metrics/classification_report.txt",
                 "metrics/confusion.csv", "metrics/astronaut.png"],
}


#: `download.source` prefixes that name no local file or folder.
REMOTE_SOURCES = ("kaggle:", "http://", "https://")


def stage_outputs_of(params: Params, path: str | Path = DEFAULT_PARAMS
                     ) -> tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]:
    """(every stage output as (key, path, is a folder), the files no output may touch as (key,
    path): the source, the local archive, the params file, dvc.yaml and dvc.lock), for
    `ferpipe.core.outputs.output_conflicts`."""
    train_out = Path(params.train.out)
    outputs = [("download.out", params.download.out, True),
               ("prepare.out", params.prepare.out, True),
               ("stats.out", params.stats.out, False),
               *((f"train.out ({name})", str(train_out / name), False)
                 for name in ("model.pt", "mlflow_run.json", "resume.pt")),
               ("plot.out", params.plot.out, True),
               ("plot.grid", params.plot.grid, False),
               *((f"{stage} stage ({path})", path, False)
                 for stage, paths in FIXED_OUTPUTS.items() for path in paths)]
    inputs = [("download.local_archive", params.download.local_archive),
              ("the params file", str(path)), ("dvc.yaml", "dvc.yaml"), ("dvc.lock", "dvc.lock")]
    if not params.download.source.startswith(REMOTE_SOURCES):
        inputs.append(("download.source", params.download.source))
    return outputs, inputs


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping and any alias (`*name`:
    one alias can expand to gigabytes, and params need none)."""

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not allowed "
                                 f"in params; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.YAMLError(f"line {line}: key '{shorten(key)[1:-1]}' is written twice "
                                     f"(first on line {seen[key]}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file with `_StrictLoader`.

    Raises:
        ParamsError: the file is missing, not UTF-8, not valid YAML, has a duplicate key or an
            alias; naming the file (and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8"
                          ) from None
    except OSError as err:
        raise ParamsError(f"{path}: cannot read: {err.strerror}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise ParamsError(f"{path}: not valid YAML: {shorten(detail, 300)[1:-1]}") from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate the whole params file (see `read_yaml`, `validate_params`).

    Raises:
        ParamsError: see `read_yaml` and `validate_params`.
    """
    return validate_params(read_yaml(path), path)


def flatten(params: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested sections to dotted keys, e.g. `{"train": {"lr": 1e-3}}` -> `{"train.lr": 1e-3}`."""
    if isinstance(params, BaseModel):
        params = params.model_dump()
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def stage_args(description: str | None) -> argparse.Namespace:
    """Parse the only option a stage takes: `--params PATH` (default `params.yaml`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=str(DEFAULT_PARAMS),
                        help="params file (YAML) (default: %(default)s)")
    return parser.parse_args()
