"""A user's own reward: ``--reward module:function`` (or ``path/to/file.py:function``) or ``reward=callable``.

The function is called as ``reward(prompts: list[str], completions: list[str]) -> list[float]``,
one value per pair, higher is better. Every mistake is one line naming the function
(:class:`evolm.errors.UsageError`): a module that cannot be imported (with its error), no such
function, not callable, a call that raises, the wrong number of values, NaN or a non-number.

Prompts come from ``task.prompts`` (a file, one prompt per line, blank lines dropped, 10% held out by
a seeded shuffle) or, without one, from windows of the configured corpus as in the self-feedback task.

The reward is shipped to Ray actors, so :class:`UserReward` pickles: a ``module:function`` spec is
stored as a string (with the directory it was named from) and imported again on first use; a Python
callable is pickled as Python pickles it (a module-level function by reference).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

from evolm.errors import UsageError
from evolm.seeding import numpy_generator
from evolm.tasks.base import Task, check_rewards, split_prompts
from evolm.tasks.self_feedback import corpus_windows

NEW_TOKENS = 32
HELDOUT_SHARE = 0.1


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def parse_reward_spec(spec: str) -> tuple[str, str]:
    """``module:function`` or ``path/file.py:function`` as (module or path, function name)."""
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise UsageError(f"config field task.reward must be module:function or path/file.py:function, got {spec!r}")
    return target, name


def _import_target(target: str, spec: str, directory: str):
    """The module a spec names: a ``.py`` file (relative to ``directory``) or a module on sys.path."""
    try:
        if target.endswith(".py"):
            path = Path(directory, target)
            if not path.is_file():
                raise UsageError(f"reward {spec}: file {path} does not exist")
            module_name = f"evolm_user_reward_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module  # what a dataclass (or pickle) in the file looks itself up by
            loader_spec.loader.exec_module(module)
            return module
        if directory not in sys.path:
            sys.path.insert(0, directory)  # a module in the directory the run was started from
        return importlib.import_module(target)
    except UsageError:
        raise
    except (Exception, SystemExit) as error:  # an import runs the user's code: any failure is theirs
        raise UsageError(f"reward {spec}: cannot import {target}: {type(error).__name__}: {_one_line(error)}") from None


def load_reward(spec: str, directory: str | None = None) -> Callable:
    """The function a ``module:function`` spec names, or a one-line UsageError naming it."""
    target, name = parse_reward_spec(spec)
    module = _import_target(target, spec, directory or os.getcwd())
    if not hasattr(module, name):
        raise UsageError(f"reward {spec}: {target} has no function {name!r}")
    function = getattr(module, name)
    if not callable(function):
        raise UsageError(f"reward {spec}: {name} is a {type(function).__name__}, not a function")
    return function


def _callable_name(function: Callable) -> str:
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None) or type(function).__name__
    return f"{module}:{name}" if module else name


class UserReward:
    """A user's reward, checked: a call that raises or returns bad values is one UsageError naming it."""

    def __init__(self, spec: str = "", function: Callable | None = None):
        if function is None and not spec:
            raise UsageError("task reward needs a function: set task.reward (--reward module:function)")
        if function is not None and not callable(function):
            raise UsageError(f"reward= must be a function, got {type(function).__name__}")
        self.spec = "" if function is not None else spec  # a callable given wins over task.reward
        self.directory = os.getcwd()  # where a relative spec is found, on any worker
        self._function = function
        self.name = spec if function is None else _callable_name(function)
        if function is None:
            self._function = load_reward(spec, self.directory)  # fail now, with the user watching

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.spec:
            state["_function"] = None  # imported again where it lands
        return state

    @property
    def function(self) -> Callable:
        if self._function is None:
            self._function = load_reward(self.spec, self.directory)
        return self._function

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        try:
            values = self.function(list(prompts), list(completions))
        except UsageError:
            raise
        except Exception as error:
            raise UsageError(f"reward {self.name} raised {type(error).__name__}: {_one_line(error)}") from None
        return check_rewards(values, len(prompts), self.name)


def read_prompts(path: str) -> list[str]:
    """The prompts of a file, one per line, blank lines dropped; a missing or empty file is one line."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"config field task.prompts: file {path} does not exist") from None
    except UnicodeDecodeError:
        raise UsageError(f"config field task.prompts: file {path} is not UTF-8 text") from None
    except OSError as error:
        raise UsageError(f"config field task.prompts: file {path} cannot be read: {error.strerror}") from None
    # Repeated lines once each (in file order), so one prompt cannot land in both train and held-out.
    prompts = list(dict.fromkeys(line for line in text.splitlines() if line.strip()))
    if not prompts:
        raise UsageError(f"config field task.prompts: file {path} holds no prompts")
    return prompts


def build_user_task(settings, corpus_text: str, reference, reward_function: Callable | None = None) -> Task:
    """The user's reward on prompts from ``task.prompts`` or windows of ``corpus_text``."""
    reward = UserReward(settings.reward, reward_function)
    if settings.prompts:
        prompts = read_prompts(settings.prompts)
        if len(prompts) < 2:
            raise UsageError(
                f"config field task.prompts: file {settings.prompts} holds 1 prompt; "
                "at least 2 are needed (10% are held out)"
            )
        train, heldout = split_prompts(prompts, HELDOUT_SHARE, numpy_generator(settings.seed, "reward", "prompts"))
        source = f"file {settings.prompts}"
    else:
        train, heldout = corpus_windows(corpus_text, settings.seed, "reward")
        source = "corpus windows"
    return Task(
        name="reward",
        train_prompts=train,
        heldout_prompts=heldout,
        reward=reward,
        new_tokens=NEW_TOKENS,
        stop=None,
        description=f"the user's reward {reward.name} on prompts from {source}",
        info={
            "reward_function": reward.name,
            "prompts": source,
            "train_prompts": len(train),
            "heldout_prompts": len(heldout),
        },
    )
