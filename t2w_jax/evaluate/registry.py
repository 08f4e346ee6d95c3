"""Evaluators, registered by name and picked by name from the eval config.

An evaluator is a function ``(ctx, rng, *, option=default, ...) -> dict`` where ``ctx`` is
an ``EvalContext`` (corpus, test images, optional generator), ``rng`` is a ``jax.random``
key derived deterministically from ``config.seed`` and the entry's key, and the keyword
arguments are its options: the entry ``config.evals.<key>`` minus its ``type`` (big_vision's
``config.evals``), passed as ``**options``. Each option's default lives in the signature
and nowhere else; an option the function does not take is an error naming it. It returns a
JSON-serialisable dict (numbers, strings, lists, dicts). Register one with::

  from t2w_jax.evaluate import registry

  @registry.register("finetune", needs_generator=True)
  def finetune(ctx, rng, *, num_tasks: int = 6, eval_every: int = 25):
    ...
    return {"steps": [...], "curves": {...}}

Evaluator modules register on import. ``get(name)`` imports the known evaluator modules
(``MODULES``) first, so a name resolves without the caller importing anything; a module of
that list that does not exist yet is skipped, any other import error propagates.
"""
import dataclasses
import importlib
import inspect
import logging
from typing import Callable

from t2w_jax.errors import ConfigError

# The modules whose import registers the built-in evaluators.
MODULES = (
    "t2w_jax.evaluate.baselines",
    "t2w_jax.evaluate.hypernet",
    "t2w_jax.evaluate.generated",
    "t2w_jax.evaluate.finetune",
    "t2w_jax.evaluate.fewshot",
    "t2w_jax.evaluate.enhance",
    "t2w_jax.evaluate.fusion",
    "t2w_jax.evaluate.shots",
    "t2w_jax.evaluate.layer_profile",
)

EvalFn = Callable[..., dict]


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """A registered evaluator.

  Attributes:
    name: the registry name (``config.evals.<key>.type``).
    fn: ``(ctx, rng, **options) -> dict``.
    needs_generator: whether it needs ``ctx.gen`` (a loaded generator).
    doc: first line of the function's docstring, for listings.
  """
  name: str
  fn: EvalFn
  needs_generator: bool
  doc: str

  @property
  def options(self) -> dict:
    """{option: default} of the function's keyword-only arguments."""
    return {p.name: p.default for p in inspect.signature(self.fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}

  def check_options(self, options) -> None:
    """Raises a ConfigError (a ValueError) naming any option the evaluator does not take."""
    unknown = sorted(set(options) - set(self.options))
    if unknown:
      raise ConfigError(f"evaluator {self.name!r} has no option {', '.join(map(repr, unknown))}"
                        f"; its options: {', '.join(sorted(self.options))}")

  def __call__(self, ctx, rng, **options) -> dict:
    """Runs the evaluator with ``options`` (keyword arguments; unknown ones are refused)."""
    self.check_options(options)
    if self.needs_generator and getattr(ctx, "gen", None) is None:
      raise ValueError(f"evaluator {self.name!r} needs a trained generator, but the "
                       "context has none (is there a checkpoint in the workdir?)")
    out = self.fn(ctx, rng, **options)
    if not isinstance(out, dict):
      raise TypeError(f"evaluator {self.name!r} returned {type(out).__name__}, not a dict")
    return out


_REGISTRY: dict[str, Evaluator] = {}
_imported = False


def register(name: str, *, needs_generator: bool = False) -> Callable[[EvalFn], EvalFn]:
  """Decorator registering ``fn`` as evaluator ``name``; returns ``fn`` unchanged.

  Args:
    name: the registry name; registering a different function under a taken name raises.
    needs_generator: if True, running it without ``ctx.gen`` raises a clear ValueError.

  Returns:
    The decorator.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"evaluator name must be a non-empty string, got {name!r}")

  def deco(fn: EvalFn) -> EvalFn:
    old = _REGISTRY.get(name)
    # Re-registration of the same function (module reloaded) is harmless.
    if old is not None and (old.fn.__module__, old.fn.__qualname__) != (
        fn.__module__, fn.__qualname__):
      raise ValueError(f"evaluator {name!r} is already registered by "
                       f"{old.fn.__module__}.{old.fn.__qualname__}")
    doc = (fn.__doc__ or "").strip().splitlines()
    _REGISTRY[name] = Evaluator(name, fn, needs_generator, doc[0] if doc else "")
    return fn

  return deco


def import_all() -> None:
  """Imports the evaluator modules in ``MODULES`` (once); missing ones are skipped."""
  global _imported
  if _imported:
    return
  for mod in MODULES:
    try:
      importlib.import_module(mod)
    except ModuleNotFoundError as e:
      if e.name != mod:  # the module exists but something it imports does not
        raise
      logging.info("evaluator module %s not present; skipped", mod)
  _imported = True


def get(name: str) -> Evaluator:
  """The evaluator registered as ``name``.

  Raises:
    KeyError: naming the unknown evaluator and listing the known ones.
  """
  if name not in _REGISTRY:
    import_all()
  if name not in _REGISTRY:
    raise KeyError(f"unknown evaluator {name!r}; known evaluators: {', '.join(names())}")
  return _REGISTRY[name]


def names() -> list[str]:
  """Sorted names of all registered evaluators (after importing ``MODULES``)."""
  import_all()
  return sorted(_REGISTRY)
