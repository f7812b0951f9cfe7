"""``maskfit sweep``: hyperparameter search over ``maskfit train`` flags, trials run in parallel on Ray Tune.

A *trial* is one ``maskfit train`` run, with a normal run directory
``OUT/<method>/<name>``; ``name`` is made of the values the sweep varies, in the order
given (``lr-3e-4_seed-0``; ``default`` when nothing varies but the method). Two
protocols choose the trials:

- ``grid`` (the default): the Cartesian product of every ``--grid FLAG=V1,V2,...``.
- ``paper``: per *group* (a method, and one value of every other ``--grid`` flag), a
  learning-rate grid (:data:`PAPER_LR_GRID`, or ``--lr-grid``) at the first seed; while
  the best dev score lies on a border of the grid, the grid is extended past that border
  by its own ratio (:func:`next_lrs`, at most ``--max-extensions`` times); then
  ``--seeds`` seeds run at the chosen lr (the first one is the grid's trial).

Only dev scores choose anything; a test score, where a task has one, is only recorded.
Every other ``maskfit train`` flag (``--task``, ``--model``, ``--epochs``, ``--threads``,
...) is the same for every trial.

Rerunning the same command reuses every trial whose run directory holds a finished run
(``metrics.json`` with a best score) with the ``run.json`` the trial would write now
(same task, data, model and flags, epochs and patience included); an interrupted trial
resumes through ``maskfit train``'s own resume; a folder holding another run is refused
before anything trains (``--overwrite`` trains every trial again).

Trials run on Ray Tune (the optional extra ``maskfit[sweep]``): an embedded local Ray by
default (``--cpus``, no dashboard), or a running cluster with ``--address``. Each trial
is a function trainable that calls :func:`maskfit.train.fit` in its own Ray worker
process and reports every epoch's dev score to Tune; it reserves ``--threads`` CPUs and,
when it trains on a GPU, ``--gpus-per-trial`` GPUs (default 1). Tune only runs trials:
the results are read back from the run directories, so a reused trial and a fresh one are
reported alike, in ``OUT/sweep.json`` and ``OUT/sweep.md`` (written atomically after every
round).
"""
from __future__ import annotations

import argparse
import datetime
import difflib
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .errors import ConfigError, DependencyError, MaskfitError

SWEEP_FILE = "sweep.json"
REPORT_FILE = "sweep.md"
TUNE_DIR = ".tune"
"""Ray Tune's own experiment files (one folder per round), under the sweep folder."""
RAY_HINT = "maskfit sweep needs Ray: pip install 'maskfit[sweep]'"

PAPER_LR_GRID: dict[str, tuple[float, ...]] = {
    "finetune": (1e-5, 3e-5, 5e-5, 7e-5, 9e-5),
    "mask": (7e-5, 1e-4, 3e-4, 5e-4, 7e-4, 1e-3),
    "lora": (1e-4, 3e-4, 1e-3, 3e-3),
}
"""The paper protocol's starting lr grid per method (finetune and mask: Zhao et al. 2020's
search ranges; lora: half-decades around the LoRA paper's rates)."""
DEFAULT_SEEDS = 3
DEFAULT_EXTENSIONS = 3
SET_BY_SWEEP = {"out": "the sweep gives each trial its folder under its own --out",
                "overwrite": "give --overwrite to maskfit sweep itself, before '--'"}
"""maskfit train flags a trial may not be given: the sweep sets them."""
FINISHED_COMPARE = ("epochs", "patience")
"""Arguments a resume may change but a finished run's result depends on."""


def require_ray():
    """The ``ray`` module, or the one-line :class:`DependencyError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DependencyError(RAY_HINT) from None
    return ray


# --------------------------------------------------------------------------- flags


def add_sweep_flags(p: argparse.ArgumentParser) -> None:
    from .cli import POSITIVE, _at_least, nonnegative_number

    p.add_argument("--out", required=True, help="sweep folder: trials go to OUT/METHOD/NAME; OUT/sweep.json and "
                   "OUT/sweep.md hold the results")
    p.add_argument("--grid", action="append", default=[], metavar="FLAG=V1,V2",
                   help="a maskfit train flag and its values (repeatable; the trials are the product of every "
                        "--grid). Values are comma-separated, or ';'-separated for a flag whose value holds commas: "
                        "--grid 'lora-targets=q,v;q,k,v'")
    p.add_argument("--protocol", choices=("grid", "paper"), default="grid",
                   help="grid: the product of the --grid values (default). paper: per method (and per value of "
                        "every other --grid flag) an lr grid at the first seed, extended while the best lr is on "
                        "its border, then --seeds seeds at the chosen lr")
    p.add_argument("--lr-grid", action="append", default=[], metavar="[METHOD=]LR1,LR2",
                   help="paper protocol: a method's starting lr grid (repeatable; without METHOD= every method's). "
                        "Default: " + "; ".join(f"{m} {','.join(fmt_number(x) for x in g)}"
                                                for m, g in PAPER_LR_GRID.items()))
    p.add_argument("--seeds", type=POSITIVE, help=f"paper protocol: seeds at the chosen lr, counted from --seed "
                   f"(default {DEFAULT_SEEDS})")
    p.add_argument("--max-extensions", type=_at_least(0),
                   help=f"paper protocol: most times a group's lr grid is extended past a border "
                        f"(default {DEFAULT_EXTENSIONS})")
    p.add_argument("--cpus", type=POSITIVE, help="CPUs of the embedded local Ray (default: this machine's); each "
                   "trial reserves --threads of them (default --threads 1)")
    p.add_argument("--gpus-per-trial", type=nonnegative_number, help="GPUs a trial that trains on a GPU reserves (default 1; "
                   "0.5 packs two trials on one GPU). A trial trains on a GPU with --device cuda, or with --device "
                   "auto on a Ray cluster that has GPUs")
    p.add_argument("--address", help="connect to a running Ray cluster (auto, or HOST:PORT) instead of starting a "
                   "local one. Every node needs maskfit, the data and OUT at the same paths (a shared file system)")
    p.add_argument("--overwrite", action="store_true", help="train every trial again, discarding the runs in their "
                   "folders (default: reuse finished trials, resume interrupted ones)")


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["lr=1e-4,3e-4", "pooling=cls,mean"]`` -> ``[("lr", ["1e-4", "3e-4"]), ("pooling", ["cls", "mean"])]``
    (flag names without dashes, ``_`` read as ``-``); bad syntax is a one-line :class:`ConfigError`."""
    out: list[tuple[str, list[str]]] = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        flag = name.strip().lstrip("-").replace("_", "-")
        if not sep or not flag or not values.strip():
            raise ConfigError(f"--grid takes FLAG=V1,V2,... (a maskfit train flag and its values), got {spec!r}")
        items = [v.strip() for v in values.split(";" if ";" in values else ",")]
        if any(not v for v in items):
            raise ConfigError(f"--grid {flag}= has an empty value in {values!r}")
        if len(set(items)) != len(items):
            raise ConfigError(f"--grid {flag}= lists a value twice: {values!r}")
        if any(flag == f for f, _ in out):
            raise ConfigError(f"--grid {flag} is given twice; give all its values in one --grid {flag}=V1,V2")
        out.append((flag, items))
    return out


def parse_lr_grids(specs: Sequence[str], methods: Sequence[str]) -> dict[str, list[float]]:
    """The paper protocol's starting lr grid of each method: the defaults, replaced by ``--lr-grid``."""
    from .train import METHODS

    grids = {m: list(PAPER_LR_GRID[m]) for m in methods}
    for spec in specs:
        method, sep, values = spec.rpartition("=")
        method = method.strip()
        targets = [method] if sep else list(methods)
        if sep and method not in METHODS:
            raise ConfigError(f"--lr-grid {spec!r}: unknown method {method!r}; expected {' or '.join(METHODS)}")
        if sep and method not in methods:
            raise ConfigError(f"--lr-grid names {method}, which this sweep does not train (methods: "
                              f"{', '.join(methods)})")
        lrs = []
        for v in values.split(","):
            if not v.strip():
                continue
            try:
                lr = float(v)
            except ValueError:
                raise ConfigError(f"--lr-grid {spec!r}: {v.strip()!r} is not a number") from None
            if not (math.isfinite(lr) and lr > 0):
                raise ConfigError(f"--lr-grid {spec!r}: a learning rate must be a positive number, got {v.strip()}")
            lrs.append(lr)
        if not lrs:
            raise ConfigError(f"--lr-grid {spec!r}: the lr grid is empty")
        for m in targets:
            grids[m] = sorted(set(lrs))
    return grids


def fmt_number(v) -> str:
    """A number as a trial name shows it: ``3e-4``, ``1.6e-4``, ``0.05``, ``2``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or v == 0 or 1e-2 <= abs(v) < 1e4:
        return f"{v:g}"
    mantissa, exponent = f"{v:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _name_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (tuple, list)):
        return "+".join(_name_value(x) for x in v)
    if isinstance(v, (int, float)):
        return fmt_number(v)
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", str(v)).strip("-.") or "x"


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


# --------------------------------------------------------------------------- the paper protocol, pure


def grid_ratio(lrs: Sequence[float]) -> float:
    """The grid's own step: the geometric mean ratio of neighbours, (max / min)^(1 / (n - 1)); √10 for one lr."""
    lrs = sorted(set(lrs))
    if not lrs:
        raise ConfigError("the lr grid is empty")
    if len(lrs) == 1:
        return math.sqrt(10.0)
    return (lrs[-1] / lrs[0]) ** (1.0 / (len(lrs) - 1))


def _round2(x: float) -> float:
    """Two significant digits: extended lrs read like the grid's (1.7e-3, not 1.7021e-3)."""
    return float(f"{x:.1e}")


def _winners(scores: Mapping[float, float]) -> list[float]:
    best = max(scores.values())
    return [lr for lr in sorted(scores) if scores[lr] == best]


def choose_lr(scores: Mapping[float, float]) -> float:
    """The lr with the best dev score; on a tie, one inside the grid before one on its border, then the lowest."""
    if not scores:
        raise ConfigError("the lr grid is empty: no lr has a dev score")
    lrs = sorted(scores)
    winners = _winners(scores)
    inside = [lr for lr in winners if lrs[0] < lr < lrs[-1]]
    return (inside or winners)[0]


def next_lrs(scores: Mapping[float, float], ratio: float, extensions: int = 0,
             max_extensions: int = DEFAULT_EXTENSIONS) -> list[float]:
    """The lrs to try next, from the dev score of each lr tried so far (``lr -> score``).

    Empty when the best score is inside the grid (a best lr with a tried lr on each side,
    ties included) or ``extensions`` has reached ``max_extensions``; else the lowest lr
    divided by ``ratio`` when a best score is at the low border, and the highest times
    ``ratio`` when one is at the high border (both for a grid of one lr), rounded to two
    significant digits.
    """
    if not scores:
        raise ConfigError("the lr grid is empty: no lr has a dev score")
    if not ratio > 1:
        raise ConfigError(f"the lr grid's ratio must be > 1, got {ratio}")
    if extensions >= max_extensions:
        return []
    lrs = sorted(scores)
    winners = _winners(scores)
    if any(lrs[0] < lr < lrs[-1] for lr in winners):
        return []
    out = []
    if lrs[0] in winners:
        out.append(_round2(lrs[0] / ratio))
    if lrs[-1] in winners:
        out.append(_round2(lrs[-1] * ratio))
    return sorted(x for x in set(out) if x not in scores)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None, None for none)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# --------------------------------------------------------------------------- trials


@dataclass
class Trial:
    """One planned ``maskfit train`` run of the sweep."""

    name: str
    method: str
    values: dict[str, str]
    """The varied flags (without the method), as the name shows them."""
    argv: list[str]
    """``maskfit train`` flags, ``--out`` included."""
    run_dir: Path
    lr: float
    seed: int
    threads: int
    device: str
    info: dict = field(repr=False)
    """The ``run.json`` this trial writes (without the machine's precision and engine)."""
    group: str = ""

    @property
    def key(self) -> str:
        return f"{self.method}/{self.name}"

    @property
    def command(self) -> str:
        return shlex.join(["maskfit", "train", *self.argv])


class Planner:
    """Turns flag values into :class:`Trial`s, checking every flag as ``maskfit train`` would."""

    def __init__(self, out: str, fixed_argv: Sequence[str]):
        from .cli import train_parser

        self.out = out
        self.parser = train_parser()
        self.actions = self.parser._option_string_actions
        fixed = [x for x in fixed_argv if x != "--quiet"]
        for tok in fixed:
            if tok in ("-h", "--help"):
                raise ConfigError("maskfit train flags: --help is not a trial flag; see maskfit train --help")
        self.given = self._given(fixed)
        for dest, why in SET_BY_SWEEP.items():
            if dest in self.given:
                raise ConfigError(f"--{dest} is not a trial flag: {why}")
        self.fixed = fixed
        self.base = self._parse(fixed)
        self._data: dict[str, dict] = {}

    def _given(self, argv: Sequence[str]) -> set[str]:
        """The dests of the flags ``argv`` names."""
        given = set()
        for tok in argv:
            if tok.startswith("--"):
                action = self.actions.get(tok.split("=", 1)[0])
                if action is not None:
                    given.add(action.dest)
        return given

    def _parse(self, argv: Sequence[str]) -> argparse.Namespace:
        return self.parser.parse_args([*argv, "--out", "-"])

    def action(self, flag: str) -> argparse.Action:
        """The ``maskfit train`` flag named ``flag`` (``lr``, ``init-sparsity``), or a one-line error."""
        action = self.actions.get(f"--{flag}")
        if action is None or action.dest == "help":
            names = sorted(o[2:] for o in self.actions if o.startswith("--"))
            close = difflib.get_close_matches(flag, names, n=1)
            raise ConfigError(f"--grid {flag}: not a maskfit train flag" + (f" (did you mean {close[0]}?)" if close
                                                                            else " (see maskfit train --help)"))
        if action.dest in SET_BY_SWEEP or action.dest == "quiet":
            raise ConfigError(f"--grid {flag}: the sweep sets --{flag} itself")
        return action

    def check_grid(self, grid: Sequence[tuple[str, list[str]]]) -> None:
        for flag, _ in grid:
            action = self.action(flag)
            if action.dest in self.given:
                raise ConfigError(f"--{flag} is both in --grid and given as a fixed value; give it once")

    def _shown(self, ns: argparse.Namespace, flag: str) -> str:
        """A flag's value in a trial name: as parsed (``lr=0.0003`` is ``3e-4``); a switch, whether it is given."""
        action = self.action(flag)
        value = getattr(ns, action.dest)
        if action.nargs == 0:
            return _name_value(value != action.default)
        return _name_value(value)

    def trial(self, point: Sequence[tuple[str, str]], group: str = "") -> Trial:
        """The trial of one grid point, ``[(flag, value), ...]`` in name order (``method`` may be among them)."""
        extra: list[str] = []
        for flag, value in point:
            action = self.action(flag)
            if action.nargs == 0:  # a switch: --grid no-mask-pooler=true,false
                if value.lower() not in _TRUE | _FALSE:
                    raise ConfigError(f"--grid {flag}: a switch takes true or false, got {value!r}")
                if value.lower() in _TRUE:
                    extra.append(f"--{flag}")
            else:
                extra += [f"--{flag}", value]
        ns = self._parse([*self.fixed, *extra])
        values = {flag: self._shown(ns, flag) for flag, _ in point if flag != "method"}
        name = "_".join(f"{flag}-{v}" for flag, v in values.items()) or "default"
        argv = [*self.fixed, *extra]
        if ns.threads is None:  # a trial's CPUs are its threads: one unless told
            ns.threads = 1
            argv += ["--threads", "1"]
        run_dir = Path(self.out) / ns.method / name
        ns.out = str(run_dir)
        argv += ["--out", str(run_dir), "--quiet"]
        from .cli import train_inputs
        from .train import run_info

        try:
            task_info, task, args, cfg = train_inputs(ns)
        except ValueError as e:  # a dataclass check that is not a ConfigError yet
            raise ConfigError(f"trial {ns.method}/{name}: {e}") from None
        info = run_info(task, ns.model, args, cfg, task_info, data=False)
        key = json.dumps(task_info, sort_keys=True)
        if key not in self._data:
            self._data[key] = task.data_fingerprint()
        info["data"] = self._data[key]
        return Trial(name, args.method, values, argv, run_dir, args.resolved_lr(ns.model), args.seed, ns.threads,
                     args.device, info, group)


# --------------------------------------------------------------------------- run directories


def finished_metrics(run_dir: Path) -> dict | None:
    """``metrics.json`` of a finished run (completed, with a finite best score), else None."""
    p = Path(run_dir) / "metrics.json"
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    best = m.get("best_score") if isinstance(m, dict) else None
    if not (isinstance(m, dict) and m.get("completed") and isinstance(best, (int, float))
            and not isinstance(best, bool) and math.isfinite(best) and isinstance(m.get("epochs"), list)):
        return None
    return m


def trial_state(trial: Trial, overwrite: bool = False) -> tuple[str, str | None]:
    """(``new`` | ``resume`` | ``reuse``, why the folder cannot be used or None) of a trial's run directory."""
    from .run import RUN_FILE, run_differences

    run_file = trial.run_dir / RUN_FILE
    if overwrite or not run_file.is_file():
        return "new", None  # a folder holding something else is maskfit train's to refuse, in the trial
    try:
        old = json.loads(run_file.read_text())
    except (OSError, ValueError, RecursionError):
        return "resume", None  # maskfit train names the fault
    if not isinstance(old, dict) or not isinstance(old.get("args"), dict):
        return "resume", None
    metrics = finished_metrics(trial.run_dir)
    data, other = run_differences(old, trial.info, FINISHED_COMPARE if metrics else ())
    started = metrics is not None or (trial.run_dir / "checkpoint" / "progress.json").is_file()
    if other or (data and started):  # a run stopped before its first checkpoint restarts on any data
        return ("reuse" if metrics else "resume"), "; ".join((other + data)[:3])
    return ("reuse" if metrics else "resume"), None


# --------------------------------------------------------------------------- executors


class RayExecutor:
    """Runs trials as Ray Tune function trainables, one Ray worker process per trial."""

    def __init__(self, out: Path, address: str | None = None, cpus: int | None = None,
                 gpus_per_trial: float | None = None, printer: Callable[[str], None] = print):
        self.out = Path(out).resolve()
        self.address = address
        self.cpus = cpus
        self.gpus_per_trial = gpus_per_trial
        self.printer = printer
        self.resources: dict | None = None
        self.rounds = 0
        self._started_here = False

    def start(self) -> None:
        if self.resources is not None:
            return
        ray = require_ray()
        try:
            import ray.tune  # noqa: F401  (pandas, pyarrow, fsspec: the [tune] extra)
        except ImportError:
            raise DependencyError(RAY_HINT) from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off: the sweep prints its progress
        # Ctrl-C stops the sweep (a rerun resumes it), rather than ending one Tune round as if its trials failed
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        if ray.is_initialized():
            pass  # a caller's Ray (e.g. a notebook): use it as it is
        elif self.address:
            if self.cpus is not None:
                raise ConfigError("--cpus sizes the local Ray; a cluster (--address) has its own")
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"cannot connect to the Ray cluster at {self.address}: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            self._started_here = True
        else:
            cpus = self.cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                 else os.cpu_count() or 1)
            saved = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = _worker_pythonpath()  # workers import this maskfit, whatever their cwd
            try:
                # address="local": a new instance even where 'ray start' left a cluster (ray.init() would join it)
                # Ray starts workers at nice 15; on one's own machine the trials are the work, and at 15
                # they starve beside anything else (a trial next to two `maskfit train` runs got 4% of a core).
                # Ray applies worker_niceness as nice(n), an increment: 0 keeps the sweep's own priority
                # (a sweep started under `nice -n 10` otherwise put its trials at 10 + 10, capped at 19).
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, object_store_memory=128 * 2**20,
                         runtime_env={"env_vars": {"RAY_worker_niceness": "0"}})
            finally:
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
            self._started_here = True
        self.resources = dict(ray.cluster_resources())
        cpus, gpus = self.resources.get("CPU", 0), self.resources.get("GPU", 0)
        self.printer(f"ray: {'cluster ' + self.address if self.address else 'local'}, {cpus:g} CPUs, {gpus:g} GPUs")

    def stop(self) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False
            self.resources = None

    def gpus(self, trial: Trial) -> float:
        """GPUs a trial reserves: it trains on a GPU with --device cuda[:N], or auto on a cluster with GPUs."""
        on_gpu = trial.device.startswith("cuda") or (trial.device == "auto" and (self.resources or {}).get("GPU", 0) > 0)
        if not on_gpu:
            return 0.0
        return 1.0 if self.gpus_per_trial is None else self.gpus_per_trial

    def run(self, trials: Sequence[Trial], overwrite: bool) -> dict[str, str | None]:
        """Run ``trials``; returns trial key -> None (finished) or the one-line reason it failed."""
        self.start()
        from ray import tune

        configs = []
        for t in trials:
            gpus = self.gpus(t)
            need = {"CPU": float(t.threads), "GPU": gpus}
            for what, amount in need.items():
                have = self.resources.get(what, 0)
                if amount > have:
                    raise ConfigError(f"trial {t.key} needs {amount:g} {what}s (--threads / --device) but Ray has "
                                      f"{have:g}" + ("; pass --cpus" if what == "CPU" and not self.address else ""))
            configs.append({"key": t.key, "argv": t.argv, "cwd": os.getcwd(), "cpus": float(t.threads), "gpus": gpus,
                            "overwrite": overwrite})
        self.rounds += 1
        name = f"round-{self.rounds}"
        storage = self.out / TUNE_DIR
        shutil.rmtree(storage / name, ignore_errors=True)  # Tune's files of an earlier invocation's round
        progress = _progress_callback(tune, self.printer)
        trainable = tune.with_resources(run_trial, lambda config: {"cpu": config["trial"]["cpus"],
                                                                   "gpu": config["trial"]["gpus"]})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(reuse_actors=False,
                                        trial_name_creator=lambda tr: tr.config["trial"]["key"],
                                        trial_dirname_creator=lambda tr: tr.config["trial"]["key"].replace("/", "_")),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=[progress],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        results = tuner.fit()
        outcome: dict[str, str | None] = {}
        for result in results:
            key = result.config["trial"]["key"]
            metrics = result.metrics or {}
            if result.error is not None:
                outcome[key] = _last_line(result.error)
            elif metrics.get("status") == "error":
                outcome[key] = metrics.get("error") or "failed"
            else:
                outcome[key] = None
        return outcome


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a HOST:PORT address where nothing listens (``ray.init`` would retry for minutes)."""
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address.strip())
    if m is None:
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"no Ray cluster answers at --address {address} ({e.strerror or type(e).__name__}); start "
                          "one with 'ray start --head', or leave --address out for a local Ray") from None


def _use_token_if_any() -> None:
    """Send Ray's authentication token when one is available and ``RAY_AUTH_MODE`` is unset: a cluster started
    with ``ray start`` on a machine that has a token requires it, and a driver sends it only in token mode.
    Before ``import ray``: Ray reads the mode when it is imported."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _worker_pythonpath() -> str:
    """PYTHONPATH for the local Ray's workers: this maskfit's folder first, every entry absolute."""
    here = str(Path(__file__).resolve().parents[1])
    parts = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([here] + [p for p in parts if p != here])


def _last_line(error) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def _progress_callback(tune, printer):
    class Progress(tune.Callback):
        """Prints each trial's epochs as Tune receives them."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "dev_score" in result and "epoch" in result:
                printer(f"  {trial.config['trial']['key']}: epoch {result['epoch']} dev {result['dev_score']:.4f}")

        def on_trial_error(self, iteration, trials, trial, **info):
            printer(f"  {trial.config['trial']['key']}: failed (Ray Tune error; see {REPORT_FILE})")

    return Progress()


def run_trial(config: dict) -> None:
    """The Tune trainable: one ``maskfit train`` run, in this Ray worker process, reporting each epoch."""
    from ray import tune

    from .cli import train_inputs, train_parser
    from .runtime import set_threads
    from .train import fit

    t = config["trial"]
    os.chdir(t["cwd"])  # Tune starts trials in a folder of its own; the sweep's paths are the driver's
    try:
        a = train_parser().parse_args(t["argv"])
        if t["gpus"] > 0 and a.device.startswith("cuda"):
            a.device = "cuda"  # the GPU Ray gave this trial (it sets CUDA_VISIBLE_DEVICES)
        elif t["gpus"] == 0 and a.device == "auto":
            a.device = "cpu"  # a trial that reserved no GPU takes none
        set_threads(a.threads)
        info, task, args, cfg = train_inputs(a)

        def report(epoch: int, record: dict) -> None:
            tune.report({"epoch": epoch, "dev_score": record["dev_score"], "train_loss": record["train_loss"]})

        result = fit(task, a.model, a.out, args, mask_config=cfg, overwrite=t["overwrite"], callbacks=[report],
                     progress=False, task_info=info)
    except (MaskfitError, ValueError, FileNotFoundError) as e:  # what maskfit train prints as one line
        tune.report({"status": "error", "error": " ".join(str(e).splitlines()) or type(e).__name__})
        return
    m = result.metrics
    final = {"status": "finished", "best_score": m["best_score"], "best_epoch": m["best_epoch"]}
    if "test_score" in m:
        final["test_score"] = m["test_score"]
    tune.report(final)


def make_executor(a, printer: Callable[[str], None]):
    """The executor ``maskfit sweep`` runs trials with (tests replace it)."""
    return RayExecutor(Path(a.out), address=a.address, cpus=a.cpus, gpus_per_trial=a.gpus_per_trial, printer=printer)


# --------------------------------------------------------------------------- the sweep


class Sweep:
    """Plans rounds of trials, runs those not finished, records every trial from its run directory."""

    def __init__(self, a, executor, printer: Callable[[str], None] = print):
        from .train import METHODS

        self.a = a
        self.out = Path(a.out)
        self.executor = executor
        self.print = printer
        self.started = time.time()
        self.grid = parse_grid(a.grid)
        self.planner = Planner(a.out, getattr(a, "train_argv", []))
        self.planner.check_grid(self.grid)
        self.protocol = a.protocol
        self.records: dict[str, dict] = {}
        self.order: list[str] = []
        self.groups: list[dict] = []
        self.rounds: list[dict] = []
        methods = dict(self.grid).get("method") or [self.planner.base.method]
        for m in methods:
            if m not in METHODS:
                raise ConfigError(f"--grid method={m}: unknown method; expected {' or '.join(METHODS)}")
        self.methods = methods
        if self.protocol == "paper":
            if "lr" in dict(self.grid) or "lr" in self.planner.given:
                raise ConfigError("the paper protocol searches lr itself: give its grid with --lr-grid "
                                  "[METHOD=]LR1,LR2, not --lr")
            if "seed" in dict(self.grid):
                raise ConfigError("the paper protocol runs --seeds N seeds, counted from --seed; not --grid seed=")
            self.lr_grids = parse_lr_grids(a.lr_grid, methods)
            self.seeds = [self.planner.base.seed + i for i in range(a.seeds or DEFAULT_SEEDS)]
            self.max_extensions = DEFAULT_EXTENSIONS if a.max_extensions is None else a.max_extensions
        else:
            given = [f for f, v in (("--lr-grid", a.lr_grid), ("--seeds", a.seeds),
                                    ("--max-extensions", a.max_extensions)) if v not in (None, [])]
            if given:
                raise ConfigError(f"{', '.join(given)} go with --protocol paper; a grid takes --grid lr=... / "
                                  "--grid seed=0,1,2")

    # ------------------------------------------------------------------ rounds

    def run_round(self, trials: list[Trial], title: str) -> None:
        """Reuse or run ``trials`` (those not already recorded by this invocation) and record them."""
        fresh, seen = [], set()
        for t in trials:
            if t.key not in self.records and t.key not in seen:
                fresh.append(t)
                seen.add(t.key)
        states, refused = {}, []
        for t in fresh:
            state, why = trial_state(t, self.a.overwrite)
            if why:
                refused.append(f"{t.run_dir} holds a different run ({why})")
            states[t.key] = state
        if refused:
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            raise ConfigError(f"{refused[0]}{more}; use another --out, or pass --overwrite to train every trial again")
        todo = [t for t in fresh if states[t.key] != "reuse"]
        if not fresh:
            return
        resuming = sum(states[t.key] == "resume" for t in todo)
        self.print(f"{title}: {len(fresh)} trial(s), {len(fresh) - len(todo)} reused, {len(todo)} to run"
                   + (f" ({resuming} resuming)" if resuming else ""))
        for t in fresh:
            if states[t.key] == "reuse":
                self._record(t, "reused")
                r = self.records[t.key]
                self.print(f"  reused {t.key}: best dev {r['metric']} {r['best']:.4f} at epoch {r['best_epoch']}")
        if todo:
            t0 = time.time()
            outcome = self.executor.run(todo, self.a.overwrite)
            for t in todo:
                self._record(t, "resumed" if states[t.key] == "resume" else "trained", outcome.get(t.key, "not run"))
                r = self.records[t.key]
                if r["status"] == "error":
                    self.print(f"  failed {t.key}: {r['error']}")
                else:
                    self.print(f"  {r['status']} {t.key}: best dev {r['metric']} {r['best']:.4f} at epoch "
                               f"{r['best_epoch']} ({r['wall_time_s']:.0f} s)")
            self.print(f"{title}: done in {time.time() - t0:.0f} s")
        self.rounds.append({"title": title, "trials": [t.key for t in fresh], "ran": [t.key for t in todo]})
        self.save()

    def _record(self, t: Trial, status: str, error: str | None = None) -> None:
        m = finished_metrics(t.run_dir)
        rec = {"key": t.key, "name": t.name, "method": t.method, "group": t.group, "flags": t.values, "lr": t.lr,
               "seed": t.seed, "run_dir": str(t.run_dir), "command": t.command, "status": status}
        if error is None and m is None:
            error = f"the run left no finished metrics.json in {t.run_dir}"
        if error is not None:
            rec.update(status="error", error=error)
        if m is not None and error is None:
            rec.update(metric=m.get("metric"), dev_scores=[e.get("dev_score") for e in m["epochs"]],
                       best=m["best_score"], best_epoch=m.get("best_epoch"), test_score=m.get("test_score"),
                       wall_time_s=m.get("wall_time_s"), n_train=m.get("n_train"), epochs_run=len(m["epochs"]),
                       epochs=(m.get("args") or {}).get("epochs"), lr=m.get("lr", t.lr),
                       precision=m.get("precision"))  # as resolved on the machine, so rows can compare it
        if t.key not in self.records:
            self.order.append(t.key)
        self.records[t.key] = rec

    def run(self) -> dict:
        try:
            if self.protocol == "paper":
                self._paper()
            else:
                self._grid()
        finally:
            stop = getattr(self.executor, "stop", None)
            if stop is not None:
                stop()
        return self.save()

    def _grid(self) -> None:
        flags = [f for f, _ in self.grid]
        trials = [self.planner.trial(list(zip(flags, values))) for values in
                  itertools.product(*[v for _, v in self.grid])]
        self._check_names(trials)
        self.run_round(trials, "grid")

    def _check_names(self, trials: Sequence[Trial]) -> None:
        seen: dict[str, Trial] = {}
        for t in trials:
            if t.key in seen and seen[t.key].argv != t.argv:
                raise ConfigError(f"two grid points give the trial name {t.key} (values that mean the same, such as "
                                  "lr=3e-4 and lr=0.0003); list each value once")
            seen[t.key] = t

    # ------------------------------------------------------------------ the paper protocol

    def _paper(self) -> None:
        others = [(f, v) for f, v in self.grid if f != "method"]
        groups = []
        for method in self.methods:
            for values in itertools.product(*[v for _, v in others]):
                rest = list(zip([f for f, _ in others], values))
                # a fixed --method is already among the trial's flags
                point = ([] if "method" in self.planner.given else [("method", method)]) + rest
                label = " ".join([method] + [f"{f}={v}" for f, v in rest])
                groups.append({"label": label, "method": method, "point": point, "lrs": list(self.lr_grids[method]),
                               "ratio": grid_ratio(self.lr_grids[method]), "extensions": 0, "extended": []})
        base = self.seeds[0]

        def trial(g, lr, seed):
            return self.planner.trial(g["point"] + [("lr", fmt_number(lr)), ("seed", str(seed))], group=g["label"])

        self.groups = groups
        pending = {g["label"]: [trial(g, lr, base) for lr in g["lrs"]] for g in groups}
        self._check_names([t for ts in pending.values() for t in ts])
        step = 0
        while pending:
            step += 1
            title = "lr grid" if step == 1 else f"lr grid extension {step - 1}"
            self.run_round([t for ts in pending.values() for t in ts], title)
            pending = {}
            for g in groups:
                scores = self._lr_scores(g, base)
                if not scores:
                    raise ConfigError(f"every lr of {g['label']} failed; see {self.out / REPORT_FILE}")
                new = [lr for lr in next_lrs(scores, g["ratio"], g["extensions"], self.max_extensions)
                       if lr not in g["lrs"]]
                if new:
                    g["extensions"] += 1
                    g["extended"] += new
                    g["lrs"] = sorted(g["lrs"] + new)
                    self.print(f"{g['label']}: best dev at lr {fmt_number(choose_lr(scores))}, on the grid's border: "
                               f"trying lr {', '.join(fmt_number(x) for x in new)}")
                    pending[g["label"]] = [trial(g, lr, base) for lr in new]
        for g in groups:
            g["chosen"] = choose_lr(self._lr_scores(g, base))
        seeds_round = [trial(g, g["chosen"], s) for g in groups for s in self.seeds]
        self.run_round(seeds_round, f"seeds {', '.join(map(str, self.seeds))} at the chosen lr")

    def _lr_scores(self, g: dict, seed: int) -> dict[float, float]:
        """lr -> best dev score of the group's finished trials at ``seed``."""
        scores = {}
        for key in self.order:
            r = self.records[key]
            if r["group"] == g["label"] and r["seed"] == seed and r["status"] != "error":
                scores[self._grid_lr(g, r)] = r["best"]
        return scores

    @staticmethod
    def _grid_lr(g: dict, r: dict) -> float:
        """The grid value a record was planned at (its run's lr, up to float printing)."""
        return min(g["lrs"], key=lambda lr: abs(math.log(lr / r["lr"])))

    # ------------------------------------------------------------------ results

    def summary(self) -> list[dict]:
        if self.protocol == "paper":
            out = []
            for g in self.groups:
                base = self.seeds[0]
                rows = [self.records[k] for k in self.order if self.records[k]["group"] == g["label"]]
                lr_scores = self._lr_scores(g, base)
                entry = {"group": g["label"], "method": g["method"],
                         "flags": {f: v for f, v in g["point"] if f != "method"},
                         "lr_grid": sorted(g["lrs"]), "lr_ratio": g["ratio"], "extensions": g["extensions"],
                         "extended": sorted(g["extended"]),
                         "lr_scores": {fmt_number(lr): s for lr, s in sorted(lr_scores.items())}}
                chosen = g.get("chosen")
                if chosen is not None:
                    at = [r for r in rows if r["status"] != "error" and self._grid_lr(g, r) == chosen]
                    at.sort(key=lambda r: r["seed"])
                    scores = [r["best"] for r in at]
                    tests = [r["test_score"] for r in at if r.get("test_score") is not None]
                    mean, std = mean_std(scores)
                    entry.update(chosen_lr=chosen, seeds=[r["seed"] for r in at], scores=scores, mean=mean, std=std,
                                 test_scores=tests or None,
                                 test_mean=mean_std(tests)[0] if tests and len(tests) == len(scores) else None,
                                 metric=at[0]["metric"] if at else None,
                                 n_train=at[0].get("n_train") if at else None,
                                 epochs=at[0].get("epochs") if at else None,
                                 failed=[r["key"] for r in rows if r["status"] == "error"])
                out.append(entry)
            return out
        out = []
        for method in dict.fromkeys(self.records[k]["method"] for k in self.order):
            rows = [self.records[k] for k in self.order if self.records[k]["method"] == method]
            ok = [r for r in rows if r["status"] != "error"]
            best = max(ok, key=lambda r: r["best"]) if ok else None  # the first of equal scores, in grid order
            out.append({"method": method, "trials": len(rows), "failed": len(rows) - len(ok),
                        "best_trial": best["key"] if best else None, "best": best["best"] if best else None,
                        "metric": best["metric"] if best else None})
        return out

    def save(self) -> dict:
        from .run import atomic_write, atomic_write_json

        result = {
            "version": 1,
            "command": shlex.join(["maskfit", "sweep", *self.a.argv]) if getattr(self.a, "argv", None) else None,
            "protocol": self.protocol,
            "grid": {f: v for f, v in self.grid},
            "train_flags": self.planner.fixed,
            "methods": self.methods,
            "updated": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_time_s": time.time() - self.started,
            "trials": [self.records[k] for k in self.order],
            "summary": self.summary(),
        }
        if self.protocol == "paper":
            result.update(lr_grids={m: list(g) for m, g in self.lr_grids.items()}, seeds=self.seeds,
                          max_extensions=self.max_extensions)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / SWEEP_FILE, result)
        atomic_write(self.out / REPORT_FILE, report_markdown(result))
        return result


# --------------------------------------------------------------------------- the report


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def report_markdown(result: dict) -> str:
    """``sweep.md``: per method (or group) the lr grid searched, the chosen lr, each seed's score and the mean ±
    std (paper protocol), then every trial. Scores ×100."""
    lines = ["# maskfit sweep", ""]
    if result.get("command"):
        lines += [f"`{result['command']}`", ""]
    lines += [f"Protocol {result['protocol']}. Scores are dev ×100 at each trial's best epoch; a test score, where "
              "the task has one, is shown but never chose anything.", ""]
    trials = result["trials"]
    if result["protocol"] == "paper":
        lines += ["| method | metric | lr grid searched (dev at seed %s) | chosen lr | dev per seed | mean ± std | "
                  "test mean |" % (result["seeds"][0] if result.get("seeds") else ""),
                  "|---|---|---|---|---|---|---|"]
        for g in result["summary"]:
            grid = ", ".join(f"{lr} ({_pct(s)})" for lr, s in g["lr_scores"].items())
            if g.get("extended"):
                grid += f"; extended {g['extensions']}×"
            if g.get("chosen_lr") is None:
                lines.append(f"| {g['group']} | | {grid} | – | | | |")
                continue
            seeds = ", ".join(f"{_pct(s)} (seed {seed})" for seed, s in zip(g["seeds"], g["scores"]))
            ms = f"{_pct(g['mean'])} ± {100 * g['std']:.1f}" if g["mean"] is not None else "–"
            lines.append(f"| {g['group']} | {g.get('metric') or ''} | {grid} | {fmt_number(g['chosen_lr'])} | {seeds} "
                         f"| {ms} | {_pct(g.get('test_mean'))} |")
        lines.append("")
    else:
        for s in result["summary"]:
            if s["best_trial"]:
                lines.append(f"- {s['method']}: best {s['best_trial']}, dev {s['metric']} {_pct(s['best'])} "
                             f"({s['trials']} trials{', %d failed' % s['failed'] if s['failed'] else ''})")
        lines.append("")
    for method in dict.fromkeys(r["method"] for r in trials):
        rows = [r for r in trials if r["method"] == method]
        if result["protocol"] == "paper":  # in the order of the grid, not of the rounds
            rows.sort(key=lambda r: (r["group"], r["lr"], r["seed"]))
        flags = list(dict.fromkeys(f for r in rows for f in r["flags"]))
        lines += [f"## {method}", "",
                  "| " + " | ".join(flags + ["best dev", "best epoch", "dev per epoch", "test", "wall s", "status"])
                  + " |", "|" + "---|" * (len(flags) + 6)]
        for r in rows:
            cells = [r["flags"].get(f, "") for f in flags]
            if r["status"] == "error":
                cells += ["–", "", "", "", "", f"error: {r.get('error', '')}".replace("|", "/")]
            else:
                cells += [_pct(r["best"]), str(r["best_epoch"]), " ".join(_pct(x) for x in r["dev_scores"]),
                          _pct(r.get("test_score")), f"{r['wall_time_s']:.0f}" if r.get("wall_time_s") else "–",
                          r["status"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Each trial is a `maskfit train` run; rerun one by hand with its command:", ""]
    lines += [f"    {r['command']}" for r in trials]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the command


def sweep_command(a) -> int:
    """``maskfit sweep``: see the module doc."""
    if a.address and "ray" not in sys.modules:
        _use_token_if_any()
    require_ray()  # before any work: the one-line hint, not a traceback halfway through

    def printer(line: str) -> None:
        print(line, flush=True)

    sweep = Sweep(a, make_executor(a, printer), printer)
    try:
        result = sweep.run()
    except KeyboardInterrupt:
        print(f"\nmaskfit: interrupted; run the same command again: finished trials are reused and interrupted ones "
              f"resume from their last complete epoch ({Path(a.out) / SWEEP_FILE} has the trials so far)",
              file=sys.stderr)
        return 130
    sys.stdout.write("\n" + report_markdown(result))
    failed = [t["key"] for t in result["trials"] if t["status"] == "error"]
    if failed:
        print(f"maskfit sweep: {len(failed)} trial(s) failed: {', '.join(failed[:5])}"
              + (" ..." if len(failed) > 5 else ""), file=sys.stderr)
        return 1
    return 0
