"""The Python steps of `make e2e` (scripts/e2e/e2e.sh), run in its throwaway copy of the project.

`python -m scripts.e2e.helpers --root DIR <command>`:
  create-bucket --stack S            the stack's bucket in its store (outside endpoint), if missing
  serve MODEL --env E --version N    serve version N as stable in environment E (the manifest edit a
                                     reviewed pull request would make; no promotion gate: the e2e
                                     chooses which version serves)
  shadow MODEL --env E (--version N [--percent P] | --remove)
                                     version N as the shadow of environment E, P% mirrored (or no
                                     shadow there any more): the manifest edit of docs/shadow.md
  break-model SRC DST --signature S  a copy of SavedModel SRC whose signature S fails every call
  await-flagger --stack S --model M --expect promoted|failed --timeout SECONDS
                                     Flagger's verdict on M (scripts/modelctl/rollout.py)
Exit codes: 0 done (or the verdict expected), 1 anything else.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.spec.manifest import LABEL_STABLE
from infra.spec.settings import load_stack_settings
from infra.spec.shadow import LABEL_SHADOW

# The sentence a failing prediction of the broken version carries, for the e2e's logs.
BROKEN_MESSAGE = "e2e: this version loads but fails every prediction on purpose"


def create_bucket(root: Path, stack: str) -> str:
    import boto3
    from botocore.exceptions import ClientError

    store = load_stack_settings(root, stack).object_store
    client = boto3.client("s3", endpoint_url=store.outside_endpoint, region_name=store.region)
    try:
        client.head_bucket(Bucket=store.bucket)
        return f"bucket {store.bucket} exists at {store.outside_endpoint}"
    except ClientError:
        client.create_bucket(Bucket=store.bucket)
        return f"bucket {store.bucket} created at {store.outside_endpoint}"


def serve(root: Path, model: str, environment: str, version: int) -> str:
    from scripts.modelctl import manifest_edit

    manifest_edit.edit(root, model, lambda d: manifest_edit.set_label(d, environment, LABEL_STABLE, version))
    return f"{model}: version {version} is stable in {environment}"


def shadow(root: Path, model: str, environment: str, version: int | None, percent: int) -> str:
    """`environments.<environment>.shadow = {version, percent}`, or no shadow with `version` None."""
    from scripts.modelctl import manifest_edit

    if version is None:
        manifest_edit.edit(root, model, lambda d: manifest_edit.drop_label(d, environment, LABEL_SHADOW))
        return f"{model}: no shadow in {environment}"
    manifest_edit.edit(root, model, lambda d: manifest_edit.set_shadow(d, environment, version, percent))
    return f"{model}: version {version} is the shadow in {environment} ({percent}% mirrored)"


def break_model(source: Path, target: Path, signature_name: str) -> str:
    """Re-export `source` with a signature that runs the original model and then fails.

    The SavedModel loads, TF-Serving serves its metadata (the readiness probe passes), and every
    predict, classify or regress call fails with INVALID_ARGUMENT from `tf.debugging.Assert`,
    which TF-Serving counts as a failed request (`:tensorflow:serving:request_count` with
    status other than OK): what Flagger's success-rate check must catch. The condition depends
    on the request (the batch size, unknown while tracing), so the assertion cannot be folded
    away when the graph is built; it is false for every request.
    """
    import tensorflow as tf

    from scripts.training.savedmodel import load_signature
    from scripts.training.train import METRICS_FILE, MODEL_CARD_FILE

    if target.exists():
        raise SystemExit(f"{target} exists; refusing to overwrite it")
    original = load_signature(source, signature_name)
    _, specs = original.structured_input_signature
    names = sorted(specs)

    class Broken(tf.Module):
        pass

    module = Broken()
    module.loaded = original._loaded_model  # keeps the variables in the export

    @tf.function(input_signature=[tf.TensorSpec([None], specs[name].dtype, name=name) for name in names])
    def serve_and_fail(*columns):
        outputs = original(**dict(zip(names, columns, strict=True)))
        check = tf.debugging.Assert(tf.size(columns[0]) < 0, [BROKEN_MESSAGE])
        with tf.control_dependencies([check]):
            return {key: tf.identity(value) for key, value in outputs.items()}

    module.serve = serve_and_fail
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    tf.saved_model.save(module, str(staging), signatures={signature_name: serve_and_fail})
    for name in (METRICS_FILE, MODEL_CARD_FILE):
        if (source / name).is_file():
            shutil.copy(source / name, staging / name)
    staging.rename(target)
    return f"{target}: a copy of {source} whose {signature_name!r} fails every call"


def await_flagger(root: Path, stack: str, model: str, expect: str, timeout: float, poll_interval: float) -> bool:
    from scripts.modelctl.rollout import ClusterReader, wait_for_rollouts

    settings = load_stack_settings(root, stack)
    target = settings.kubernetes
    reader = ClusterReader(
        settings.namespace, context=target and target.context, kubeconfig=target and target.kubeconfig
    )
    (verdict,) = wait_for_rollouts(
        [model],
        reader,
        timeout=timeout,
        poll_interval=poll_interval,
        report=lambda v: print(f"rollout {v}", flush=True),
    )
    print(f"{model}: Flagger's verdict: {verdict.outcome} (expected {expect}); {verdict.detail}")
    return verdict.outcome.value == expect


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.e2e.helpers", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    commands = parser.add_subparsers(dest="command", required=True)
    bucket = commands.add_parser("create-bucket")
    bucket.add_argument("--stack", required=True)
    serving = commands.add_parser("serve")
    serving.add_argument("model")
    serving.add_argument("--env", required=True)
    serving.add_argument("--version", type=int, required=True)
    shadowing = commands.add_parser("shadow")
    shadowing.add_argument("model")
    shadowing.add_argument("--env", required=True)
    which = shadowing.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int)
    which.add_argument("--remove", action="store_true")
    shadowing.add_argument("--percent", type=int, default=100)
    broken = commands.add_parser("break-model")
    broken.add_argument("source", type=Path)
    broken.add_argument("target", type=Path)
    broken.add_argument("--signature", default="serving_default")
    verdict = commands.add_parser("await-flagger")
    verdict.add_argument("--stack", required=True)
    verdict.add_argument("--model", required=True)
    verdict.add_argument("--expect", choices=("promoted", "failed"), required=True)
    verdict.add_argument("--timeout", type=float, required=True)
    verdict.add_argument("--poll-interval", type=float, default=10.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "create-bucket":
        print(create_bucket(args.root, args.stack))
    elif args.command == "serve":
        print(serve(args.root, args.model, args.env, args.version))
    elif args.command == "shadow":
        print(shadow(args.root, args.model, args.env, args.version, args.percent))
    elif args.command == "break-model":
        print(break_model(args.source, args.target, args.signature))
    else:
        return (
            0 if await_flagger(args.root, args.stack, args.model, args.expect, args.timeout, args.poll_interval) else 1
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
