"""A start-up check for verl launches: is the reward that will run really ours?

verl 0.9 reads its custom reward only from ``reward.custom_reward_function``
(``path``, ``name``, ``reward_kwargs``) and its manager from
``reward.reward_manager.name``. The keys older launch scripts used (VALOR's
included) still parse, but ``main_ppo`` no longer converts them: a run
configured with ``custom_reward_function.path=...`` or
``reward_model.reward_manager=batch`` trains on verl's default scorer without
a word (``research/training_ecosystem.md`` section 1). This module checks a
configuration before any GPU is touched:

- the effective reward function is ``harness/training/verl_reward.py``'s
  ``compute_score`` (the file resolved, loaded the way verl loads it, and
  callable with verl's keyword arguments), with a reward YAML that loads;
- the manager is one that calls a per-sample async function (``naive``,
  ``rate_limited``);
- no legacy key that verl 0.9 silently ignores carries a value (top-level
  ``custom_reward_function.*``, ``reward_model.*``, VALOR's ``data.system_prompt``);
- the run is one protocol throughout: the reward YAML's, ``reward_kwargs.protocol``,
  the training data's (its ``manifest.json``) and Qwen3's thinking (on under
  ``paper``, as the original trained; off under ``harness``) agree;
- the rollout log's step arithmetic holds (``rollouts_per_step`` is the batch times
  the group size) and the verifier's concurrency is divided among the reward workers
  there are.

It reads either the command line's Hydra overrides (composed with verl's own
defaults when verl and Hydra are installed, else checked as they are) or a
final configuration file (a run's ``.hydra/config.yaml``).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from harness.overrides import read_scalar
from harness.training.reward import RewardConfig

log = logging.getLogger(__name__)

OUR_REWARD_FILE = Path(__file__).resolve().with_name("verl_reward.py")
OUR_REWARD_NAME = "compute_score"
# Managers of verl 0.9's reward loop that call a per-sample (async) compute_score.
PER_SAMPLE_MANAGERS = ("naive", "rate_limited")
VERL_DEFAULT_REWARD_NAME = "compute_score"  # reward/reward.yaml
VERL_DEFAULT_MANAGER = "naive"
# Keys that parse in verl 0.9 but that main_ppo never reads (legacy_reward_impl.yaml),
# and VALOR's patched-in system prompt, which upstream verl never had.
LEGACY_KEYS = ("custom_reward_function", "reward_model", "data.system_prompt")
# The keyword arguments verl's reward loop passes to the function.
VERL_CALL_KWARGS = ("data_source", "solution_str", "ground_truth", "extra_info")
# What train.sh passes in reward_kwargs (the parameters of verl_reward.compute_score).
REWARD_KWARGS = ("config", "protocol", "processes", "log_dir", "run", "rollouts_per_step", "checkpoint_dir")

# The paper's values (Table 10, appendix A.6.3, the released launch script): a
# deviation is reported, not refused (a smaller ablation run may mean it).
PAPER_SETTINGS: dict[str, Any] = {
    "algorithm.adv_estimator": "grpo",
    "algorithm.use_kl_in_reward": False,
    "data.train_batch_size": 64,
    "data.max_prompt_length": 6000,
    "data.max_response_length": 2000,
    "actor_rollout_ref.rollout.n": 5,
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.name": "vllm",
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.kl_loss_coef": 0.01,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.actor.clip_ratio": 0.2,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 64,
    "trainer.total_epochs": 4,
}
THINKING_KEY = "data.apply_chat_template_kwargs.enable_thinking"


@dataclass
class Override:
    """One Hydra command-line override: ``key=value``, ``+key=value``, ``++key=value`` or ``~key``."""

    key: str
    value: Any
    op: str  # "set", "add" (+), "force" (++), "delete" (~)

    @classmethod
    def parse(cls, text: str) -> "Override":
        if text.startswith("~"):
            key, _, value = text[1:].partition("=")
            return cls(key, read_scalar(value) if value else None, "delete")
        op = "set"
        if text.startswith("++"):
            op, text = "force", text[2:]
        elif text.startswith("+"):
            op, text = "add", text[1:]
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ValueError(f"not a Hydra override: {text!r} (expected key=value)")
        return cls(key, _hydra_value(value), op)


def _hydra_value(text: str) -> Any:
    """A value as Hydra reads it, near enough for checking: YAML scalars and lists;
    quoted strings unquoted; anything YAML cannot read stays the text."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return read_scalar(text)
    except yaml.YAMLError:
        return text


def overrides_tree(overrides: Sequence[str]) -> dict[str, Any]:
    """The overrides as a nested mapping (later ones win, ``~key`` removes)."""
    tree: dict[str, Any] = {}
    for item in map(Override.parse, overrides):
        *parents, leaf = item.key.split(".")
        target = tree
        for part in parents:
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
        if item.op == "delete":
            target.pop(leaf, None)
        else:
            target[leaf] = item.value
    return tree


def get_dotted(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _set_leaves(node: Any, prefix: str) -> list[str]:
    """Dotted names of the leaves under ``node`` that hold a value (not None, not empty)."""
    if isinstance(node, Mapping):
        return [name for key, child in node.items() for name in _set_leaves(child, f"{prefix}.{key}")]
    if node is None or node == {} or node == []:
        return []
    return [prefix]


def compose_verl_config(overrides: Sequence[str]) -> dict[str, Any]:
    """verl's ``ppo_trainer`` configuration with the overrides, as ``main_ppo`` composes it
    (needs verl and Hydra; unknown keys without ``+`` fail here as they would there)."""
    import verl
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    config_dir = Path(verl.__file__).resolve().parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        composed = compose(config_name="ppo_trainer", overrides=list(overrides))
    try:
        return OmegaConf.to_container(composed, resolve=True)  # type: ignore[return-value]
    except Exception:  # an interpolation that needs run time; the reward keys are literal anyway
        return OmegaConf.to_container(composed, resolve=False)  # type: ignore[return-value]


def can_compose() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("verl", "hydra", "omegaconf"))


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    effective: dict[str, Any] = field(default_factory=dict)  # the reward settings that will be used
    source: str = ""  # what was checked: composed config, overrides, or a file

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        lines = [f"verl config check ({self.source}): {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  {key} = {value}" for key, value in self.effective.items()]
        lines += [f"  warning: {text}" for text in self.warnings]
        lines += [f"  error: {text}" for text in self.errors]
        return "\n".join(lines)


def load_reward_function(path: str | Path, name: str) -> Any:
    """The function at ``path``:``name``, imported from the file as verl imports it."""
    spec = importlib.util.spec_from_file_location("custom_reward_under_check", str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise AttributeError(f"{path} has no function {name!r}")
    return getattr(module, name)


def check_config(config: Mapping[str, Any], complete: bool, source: str = "",
                 expected_path: Path = OUR_REWARD_FILE, expected_name: str = OUR_REWARD_NAME) -> CheckReport:
    """Check a configuration mapping. ``complete``: it is a composed or final config
    (missing keys are missing); otherwise it holds only the overrides (missing keys
    take verl's defaults)."""
    report = CheckReport(source=source)
    errors = report.errors

    for key in LEGACY_KEYS:
        for leaf in _set_leaves(get_dotted(config, key), key):
            errors.append(f"{leaf} is set, but verl 0.9 ignores it without a word; use reward.* "
                          f"(reward.custom_reward_function.path/name/reward_kwargs, reward.reward_manager.name)")

    function = get_dotted(config, "reward.custom_reward_function", {}) or {}
    path, name = function.get("path"), function.get("name")
    if name is None and not complete:
        name = VERL_DEFAULT_REWARD_NAME
    kwargs = function.get("reward_kwargs") or {}
    manager = get_dotted(config, "reward.reward_manager.name", None if complete else VERL_DEFAULT_MANAGER)
    manager_source = get_dotted(config, "reward.reward_manager.source", "register")
    report.effective = {"reward.custom_reward_function.path": path, "reward.custom_reward_function.name": name,
                        "reward.custom_reward_function.reward_kwargs": dict(kwargs),
                        "reward.reward_manager.name": manager}

    if not path:
        errors.append("reward.custom_reward_function.path is not set: verl would score with its default "
                      f"rule-based scorer; set it to {expected_path}")
    elif Path(os.path.expanduser(str(path))).resolve() != expected_path.resolve():
        errors.append(f"reward.custom_reward_function.path is {path}, not our reward {expected_path}")
    if name != expected_name:
        errors.append(f"reward.custom_reward_function.name is {name!r}, not {expected_name!r}")
    if manager not in PER_SAMPLE_MANAGERS:
        errors.append(f"reward.reward_manager.name is {manager!r}; our per-sample async reward needs one of "
                      f"{', '.join(PER_SAMPLE_MANAGERS)}")
    if manager_source != "register":
        errors.append(f"reward.reward_manager.source is {manager_source!r}; use 'register' with "
                      f"{' or '.join(PER_SAMPLE_MANAGERS)}")

    reward_yaml = kwargs.get("config")
    protocol = kwargs.get("protocol")
    if not reward_yaml:
        errors.append("reward.custom_reward_function.reward_kwargs.config is not set: pass the reward YAML "
                      "(+reward.custom_reward_function.reward_kwargs.config=<file>)")
    else:
        try:
            loaded = RewardConfig.from_yaml(reward_yaml, protocol)
            protocol = loaded.protocol
            report.effective["verifier"] = f"{loaded.verifier.get('backend')}:{loaded.verifier.get('model')}"
            report.effective["protocol"] = protocol
        except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
            errors.append(f"reward YAML {reward_yaml} does not load: {exc}")
    if protocol in ("paper", "harness"):
        _check_protocol(config, protocol, complete, report)
    _check_rollout_log(config, kwargs, complete, report)
    unknown_kwargs = sorted(set(kwargs) - set(REWARD_KWARGS))
    if unknown_kwargs:
        errors.append(f"reward_kwargs {unknown_kwargs} are not parameters of our compute_score "
                      f"({', '.join(REWARD_KWARGS)})")
    if path and not errors:
        _check_callable(path, name, kwargs, errors)

    for key, expected in PAPER_SETTINGS.items():
        value = get_dotted(config, key)
        if value is None and not complete:
            continue  # not overridden: verl's default (the ones that matter are set by train.sh)
        if value != expected:
            report.warnings.append(f"{key} = {value!r}; the paper used {expected!r}")
    return report


def _check_protocol(config: Mapping[str, Any], protocol: str, complete: bool, report: CheckReport) -> None:
    """Thinking and the training data must be the protocol's."""
    thinking = get_dotted(config, THINKING_KEY)
    if protocol == "paper" and thinking is False:
        report.errors.append(f"{THINKING_KEY}=False, but the paper protocol trains with thinking on, as the "
                             f"original did (it passed nothing); drop it or use the harness protocol")
    if protocol == "harness" and thinking is not False and (complete or thinking is not None):
        report.warnings.append(f"{THINKING_KEY} = {thinking!r}; the harness protocol trains without thinking")
    if protocol == "harness" and thinking is None and not complete:
        report.warnings.append(f"{THINKING_KEY} is not set; the harness protocol trains without thinking")
    files = get_dotted(config, "data.train_files")
    for name in files if isinstance(files, list) else [files] if files else []:
        manifest = Path(os.path.expanduser(str(name))).parent / "manifest.json"
        if not manifest.is_file():
            continue
        try:
            written = (yaml.safe_load(manifest.read_text(encoding="utf-8")).get("options") or {}).get("protocol")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if written is not None and written != protocol:
            report.errors.append(f"{name} was written for protocol {written!r} ({manifest}), the reward's is "
                                 f"{protocol!r}; write it with `harness training-data --protocol {protocol}`")


def _check_rollout_log(config: Mapping[str, Any], kwargs: Mapping[str, Any], complete: bool,
                       report: CheckReport) -> None:
    """A rollout's step is its rank in the run divided by the rollouts per step: they must match
    the batch; the verifier's concurrency is divided by ``processes``, which should be the workers."""
    batch = get_dotted(config, "data.train_batch_size")
    group = get_dotted(config, "actor_rollout_ref.rollout.n")
    if kwargs.get("log_dir"):
        missing = [k for k in ("run", "rollouts_per_step") if not kwargs.get(k)]
        if missing:
            report.errors.append(f"reward_kwargs.log_dir needs reward_kwargs {', '.join(missing)} as well")
        elif isinstance(batch, int) and isinstance(group, int) and int(kwargs["rollouts_per_step"]) != batch * group:
            report.errors.append(f"reward_kwargs.rollouts_per_step is {kwargs['rollouts_per_step']}, but a step has "
                                 f"{batch} x {group} = {batch * group} rollouts; the rollout log's steps would be wrong")
    workers = get_dotted(config, "reward.num_workers")
    processes = int(kwargs.get("processes") or 1)
    if isinstance(workers, int) and workers != processes:
        report.warnings.append(f"reward_kwargs.processes is {processes} but reward.num_workers is {workers}: the "
                               f"verifier's max_concurrency is divided by {processes}, not by the workers there are")


def _check_callable(path: str, name: str, kwargs: Mapping[str, Any], errors: list[str]) -> None:
    """Load the function as verl will, and check that verl's call binds to it."""
    try:
        function = load_reward_function(path, name)
    except Exception as exc:  # anything the import raises would stop verl too
        errors.append(f"loading {name} from {path} failed: {type(exc).__name__}: {exc}")
        return
    if not inspect.iscoroutinefunction(function):
        errors.append(f"{path}:{name} is not an async function; verl would run it in a thread per sample")
    try:
        inspect.signature(function).bind(**dict.fromkeys(VERL_CALL_KWARGS), **kwargs)
    except TypeError as exc:
        errors.append(f"verl's call would not bind to {name}{inspect.signature(function)}: {exc}")


def check_overrides(overrides: Sequence[str], compose: str = "auto") -> CheckReport:
    """Check a launch's overrides: composed with verl's defaults (``compose``: ``auto``
    when verl and Hydra are installed, ``always``, ``never``), else as they are."""
    if compose not in ("auto", "always", "never"):
        raise ValueError(f"compose must be auto, always or never, got {compose!r}")
    if compose == "always" or (compose == "auto" and can_compose()):
        try:
            config = compose_verl_config(overrides)
        except Exception as exc:  # Hydra's errors (unknown key, bad value) end the launch as well
            return CheckReport(errors=[f"verl could not compose the configuration: {type(exc).__name__}: {exc}"],
                               source="composed with verl's defaults")
        return check_config(config, complete=True, source="composed with verl's defaults")
    return check_config(overrides_tree(overrides), complete=False, source="overrides only (verl not installed)")


def check_file(path: str | Path) -> CheckReport:
    """Check a final configuration file (YAML or JSON), e.g. a run's ``.hydra/config.yaml``."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return check_config(data, complete=True, source=str(path))
