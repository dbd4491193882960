"""The sweep file (W&B's sweep format): parsed and checked into a :class:`Sweep`, and the W&B
parameter specs turned into config overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ..config import ConfigError, load_config

METHODS = ("grid", "random", "bayes")


DISTRIBUTIONS = ("categorical", "constant", "int_uniform", "uniform", "q_uniform", "log_uniform_values",
                 "q_log_uniform_values")


@dataclass
class Sweep:
    """A parsed sweep file."""

    path: Path
    name: str
    method: str
    metric: str
    goal: str  # maximize | minimize
    parameters: dict  # config key -> W&B parameter spec
    experiment: Path
    fixed: list = field(default_factory=list)  # key=value overrides of every trial
    early_terminate: dict | None = None
    run_cap: int | None = None
    raw: dict = field(default_factory=dict)

    @property
    def maximize(self) -> bool:
        return self.goal == "maximize"


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:
        raise ConfigError(f"{path}: cannot parse YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping (method, metric, parameters, command)")
    method = raw.get("method")
    if method not in METHODS:
        raise ConfigError(f"{path}: method must be one of {', '.join(METHODS)}, got {method!r}")
    metric = raw.get("metric") or {}
    if not isinstance(metric, dict) or not metric.get("name"):
        raise ConfigError(f"{path}: metric needs a name, e.g. metric: {{name: val/dice_mean, goal: maximize}}")
    goal = metric.get("goal", "minimize")  # W&B's default
    if goal not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: metric.goal must be maximize or minimize, got {goal!r}")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: parameters is empty; name config keys, "
                          "e.g. model.synthesis.width: {values: [8, 16]}")
    for key, spec in params.items():
        check_distribution(path, key, spec, method)
    command = [str(c) for c in raw.get("command") or []]
    yamls = [c for c in command if c.endswith((".yaml", ".yml"))]
    if len(yamls) != 1:
        raise ConfigError(f"{path}: command must name one experiment YAML, e.g. "
                          "[fire, train, experiments/phantom2d.yaml, ${args_no_hyphens}]")
    experiment = Path(yamls[0])
    if not experiment.is_absolute() and not experiment.is_file():
        experiment = path.parent / experiment if (path.parent / experiment).is_file() else experiment
    fixed = [c for c in command if "=" in c and not c.startswith("$")]
    trial = load_config(experiment, fixed + [f"{k}={_example(spec)}" for k, spec in params.items()])  # keys, values
    if int(trial.trainer.devices) * int(trial.trainer.num_nodes) > 1:
        raise ConfigError(f"{path}: a trial runs in one process (trainer.devices=1); run one worker per GPU with "
                          "--gpus instead")
    early = raw.get("early_terminate")
    if early is not None and (not isinstance(early, dict) or early.get("type") != "hyperband"):
        raise ConfigError(f"{path}: early_terminate supports type: hyperband (with min_iter, eta)")
    cap = raw.get("run_cap")
    return Sweep(path, raw.get("name") or path.stem, method, metric["name"], goal, params, experiment, fixed, early,
                 int(cap) if cap else None, raw)


def check_distribution(path: Path, key: str, spec, method: str) -> str:
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: parameters.{key} must be a mapping (values / value / min, max)")
    dist = spec.get("distribution") or ("categorical" if "values" in spec else "constant" if "value" in spec else
                                        "int_uniform" if isinstance(spec.get("min"), int) and
                                        isinstance(spec.get("max"), int) else "uniform")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{path}: parameters.{key}: distribution {dist!r} not supported ({', '.join(DISTRIBUTIONS)})")
    if dist not in ("categorical", "constant") and ("min" not in spec or "max" not in spec):
        raise ConfigError(f"{path}: parameters.{key}: {dist} needs min and max")
    if method == "grid" and dist not in ("categorical", "constant"):
        raise ConfigError(f"{path}: parameters.{key}: a grid sweep takes values (or value), not {dist}")
    return dist


def _example(spec: dict):
    return choices(spec)[0] if "values" in spec else spec.get("value", spec.get("min"))


def choices(spec: dict) -> list:
    """A categorical parameter's values as Optuna takes them: a list value (``[8,8,8]``) as its override text."""
    return [f"[{','.join(str(x) for x in v)}]" if isinstance(v, (list, tuple)) else v for v in spec["values"]]


def as_override(key: str, value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    return f"{key}={value}"


def sweep_dir(sweep: Sweep, out: str | Path | None) -> Path:
    return Path(out) if out else Path("runs") / "sweeps" / sweep.name
