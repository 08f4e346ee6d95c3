"""t2w_jax.evaluate: generated nets against baselines, by named evaluators.

    from t2w_jax.evaluate import evaluate, registry
    results = evaluate(config, workdir)     # writes workdir/eval/{results.json,table.md}
    print(results["table"])

Evaluators are registered by name (``registry.register``) and picked by
``config.evals.<key>.type``; see ``registry`` for the protocol.
"""
from t2w_jax.evaluate import registry
from t2w_jax.evaluate.run import evaluate

__all__ = ["evaluate", "registry"]
