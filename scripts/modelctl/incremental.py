"""The plan of only what a change can reach (the mode, incremental or full, and why:
`scripts/modelctl/scope.py`): an incremental plan's runs, assembled back into whole stacks.

A model's resources are a function of the program (its code, `Pulumi.yaml`, the requirements),
the stack file and the model's own manifest: `program.declare` builds the platform from the
stack alone and each `ModelDeployment` from the stack, the platform and one manifest; a serving
pool's (`ServingPool`) from the stack, the platform and its members' manifests; only the
`models` and `pools` stack outputs depend on the set of models. So when a change leaves every
file but the manifests alone (and files that declare nothing: the tooling, the policy pack,
tests, docs), only the models whose manifests differ, and the pools that hold one of them on
either side, can differ between base and head. Both sides then declare the platform and those
models and pools only; every other model's and pool's resources are the same on both sides by
construction, and are taken from the plan cache (or, the first time, from one run of the head
that declares them), so the diff, the capacity and the policy checks see whole stacks, exactly
as in a full plan. Anything else touching the program runs the full plan.
"""

from __future__ import annotations

import gc
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from infra.offline import DeclaredResource, OfflineRun
from scripts.modelctl import forked, snapshot
from scripts.modelctl.plan import STACK_ITSELF, Component, ComponentKind, components, pool_members
from scripts.modelctl.plancache import PlanCache, cache_key, records, resources_from_records
from scripts.modelctl.scope import Scope

# What the plan cache keeps apart from a stack's skeleton: a model's resources, a pool's.
PIECE_KINDS = (ComponentKind.model, ComponentKind.pool)


# Runs of a subset, and whole stacks from them --------------------------------------------------


def piece_of(run: OfflineRun) -> dict[str, Component | None]:
    """URN -> the model or pool whose component it is or descends from (None: the platform and
    the stack's own resources, the skeleton)."""
    return {urn: owner if owner.kind in PIECE_KINDS else None for urn, owner in components(run).items()}


def pieces(run: OfflineRun) -> dict[Component, list[DeclaredResource]]:
    """Each declared model's and pool's resources, in the run's order."""
    owners = piece_of(run)
    grouped: dict[Component, list[DeclaredResource]] = {}
    for resource in run.resources:
        owner = owners[resource.urn]
        if owner is not None:
            grouped.setdefault(owner, []).append(resource)
    return grouped


def in_canonical_order(run: OfflineRun) -> OfflineRun:
    """The run's resources as: platform and stack resources, then model by model and pool by
    pool (by kind and name), each group by URN. Registration order interleaves components (a
    resource registers when its inputs resolve), so both modes put every run in this order
    before it is diffed, checked or rendered: the same resources give the same report whichever
    way they were obtained."""
    owners = piece_of(run)
    ordered = sorted(run.resources, key=lambda r: (owners[r.urn] is not None, owners[r.urn] or STACK_ITSELF, r.urn))
    return OfflineRun(run.stack, ordered, run.outputs, run.served_models)


def assemble(run: OfflineRun, others: Mapping[Component, Sequence[DeclaredResource]]) -> OfflineRun:
    """A whole stack from a run that declared some models and pools and the others' resources:
    a piece the run declared keeps its own resources (a base revision that could not declare a
    subset declared them all)."""
    declared = set(pieces(run))
    resources = list(run.resources)
    for piece, resources_of_piece in others.items():
        if piece not in declared:
            resources += resources_of_piece
    return in_canonical_order(OfflineRun(run.stack, resources, run.outputs, run.served_models))


def pool_companions(root: Path, stacks: Sequence[str], changed: Collection[str]) -> set[str]:
    """One unchanged member (the first by name) of each pool a changed model joins in the tree
    at `root`, for the base side to declare too.

    A model's shard follows from its own name and manifest and the stack (infra/spec/placement.py),
    so an unchanged model is in the same pool on both sides, and a pool holds the same members on
    both sides unless a changed model is one of them. The base declares the pools of its changed
    models; the pool a changed model joins in the head (added, or moved) has on the base side
    unchanged members only, and is not the head's: declaring one of its members declares it.
    Every other pool is the same on both sides. Empty when the tree cannot be placed (the run
    of the head reports why)."""
    from infra.spec.errors import ConfigError
    from infra.spec.manifest import load_manifests, served_in
    from infra.spec.placement import place
    from infra.spec.settings import load_stack_settings, stack_environments

    companions: set[str] = set()
    try:
        manifests = load_manifests(root, environments=stack_environments(root) or None)
        for stack in stacks:
            settings = load_stack_settings(root, stack)
            for shard in place(settings, served_in(manifests, settings.environment)).shards:
                if set(shard.member_names) & set(changed):
                    companions |= set(sorted(set(shard.member_names) - set(changed))[:1])
    except ConfigError:
        return set()
    return companions


@dataclass
class PieceStore:
    """Models' and pools' resources in the plan cache, by what determines them: the program (its
    files), the stack, and the model's manifest, or the pool's members' manifests."""

    cache: PlanCache | None
    program_digest: str
    written: int = field(default=0)

    def key(self, stack: str, model: str, manifest_blob: str) -> str:
        return cache_key("model", self.program_digest, stack, model, manifest_blob)

    def pool_key(self, stack: str, pool: str, members: Mapping[str, str]) -> str:
        """A pool's resources: its members, each with its manifest's blob."""
        return cache_key("pool", self.program_digest, stack, pool, sorted(members.items()))

    def _entry(
        self, stack: str, piece: Component, manifests: Mapping[str, str], memberships: Mapping[str, Sequence[str]]
    ) -> tuple[str, str] | None:
        """(kind, key) of a piece's entry; None when what determines it is not known."""
        if piece.kind is ComponentKind.model:
            blob = manifests.get(piece.name)
            return ("model", self.key(stack, piece.name, blob)) if blob is not None else None
        members = {m: manifests.get(m) for m in memberships.get(piece.name, ())}
        if not members or None in members.values():
            return None
        return ("pool", self.pool_key(stack, piece.name, members))

    def get(
        self, stack: str, piece: Component, manifests: Mapping[str, str], memberships: Mapping[str, Sequence[str]]
    ) -> list[DeclaredResource] | None:
        entry = self._entry(stack, piece, manifests, memberships) if self.cache is not None else None
        if self.cache is None or entry is None:
            return None
        stored = self.cache.get(*entry)
        return resources_from_records(stored) if isinstance(stored, list) else None

    def put(
        self,
        stack: str,
        piece: Component,
        manifests: Mapping[str, str],
        memberships: Mapping[str, Sequence[str]],
        resources: Sequence[DeclaredResource],
    ) -> None:
        entry = self._entry(stack, piece, manifests, memberships) if self.cache is not None else None
        if self.cache is None or entry is None:
            return
        self.cache.put(*entry, records(resources))
        self.written += 1

    def put_run(self, run: OfflineRun, manifests: Mapping[str, str]) -> None:
        """Keep every model and pool a (full) run declared, and its skeleton, for later incremental plans."""
        memberships = pool_members(run.outputs)
        for piece, resources in pieces(run).items():
            self.put(run.stack, piece, manifests, memberships, resources)
        self.put_skeleton(run, manifests)

    # A stack's skeleton: what a run declared outside any model or pool (the platform, the
    # stack's own resources), its outputs and the models it serves. Keyed by the program, the
    # stack and every manifest (name and blob): it is exactly what any run with those inputs
    # declares besides the models and pools, whichever it declared. With the models' and pools'
    # entries it rebuilds the base side of the next pull request without running anything: the
    # head of one plan is the base of the next.

    def skeleton_key(self, stack: str, manifests: Mapping[str, str]) -> str:
        return cache_key("skeleton", self.program_digest, stack, sorted(manifests.items()))

    def put_skeleton(self, run: OfflineRun, manifests: Mapping[str, str]) -> None:
        if self.cache is None or run.served_models is None:
            return
        owners = piece_of(run)
        value = {
            "resources": records(r for r in run.resources if owners[r.urn] is None),
            "outputs": run.outputs,
            "served_models": list(run.served_models),
        }
        self.cache.put("skeleton", self.skeleton_key(run.stack, manifests), value)

    def get_skeleton(self, stack: str, manifests: Mapping[str, str]) -> OfflineRun | None:
        if self.cache is None:
            return None
        stored = self.cache.get("skeleton", self.skeleton_key(stack, manifests))
        try:
            resources = resources_from_records(stored["resources"])
            served = tuple(stored["served_models"])
            outputs = stored["outputs"]
        except (KeyError, TypeError):
            return None
        if resources is None or not isinstance(outputs, dict) or not all(isinstance(m, str) for m in served):
            return None
        return OfflineRun(stack, resources, outputs, served)

    def base_of(
        self, stacks: Sequence[str], scope: Scope, label: str, companions: Collection[str] = ()
    ) -> snapshot.Snapshot | None:
        """The base side of an incremental plan (the platform, the changed models, and the pools
        of those and of `companions`, as a base run declaring them gives them) from stored
        skeletons and entries only, or None when any is missing."""
        assert scope.base is not None
        manifests = scope.base.manifests()
        runs = {}
        for stack in stacks:
            skeleton = self.get_skeleton(stack, manifests)
            if skeleton is None or skeleton.served_models is None:
                return None
            memberships = pool_members(skeleton.outputs)
            declared = scope.changed_models | set(companions)
            wanted = [
                Component(ComponentKind.model, m) for m in sorted(scope.changed_models & set(skeleton.served_models))
            ]
            wanted += [
                Component(ComponentKind.pool, p)
                for p, members in sorted(memberships.items())
                if declared & set(members)
            ]
            resources = list(skeleton.resources)
            for piece in wanted:
                found = self.get(stack, piece, manifests, memberships)
                if found is None:
                    return None
                resources += found
            runs[stack] = OfflineRun(stack, resources, skeleton.outputs, skeleton.served_models)
        return snapshot.Snapshot(label, runs, subset=True)


def head_runs(
    root: Path, stacks: Sequence[str], scope: Scope, store: PieceStore, jobs: int = 1
) -> tuple[dict[str, OfflineRun], dict[str, dict[Component, list[DeclaredResource]]]]:
    """The head's whole stacks, declaring only the changed models (with their pools) and the
    models and pools the cache lacks; also every unchanged model's and pool's resources per
    stack (a pool is unchanged when none of its members is), for the base side. `jobs` 2: the
    stacks that lack pieces are declared by two processes (`_declare_missing`)."""
    assert scope.head is not None
    manifests = scope.head.manifests()
    changed = scope.changed_models
    runs = snapshot.take(root, stacks, short_lived=True, only_models=changed).runs
    unchanged: dict[str, dict[Component, list[DeclaredResource] | None]] = {}
    missing: set[str] = set()
    with _cyclic_gc_paused():
        for stack, run in runs.items():
            if run.served_models is None:
                raise snapshot.RevisionError(f"working tree: stack {stack}: the program did not say what it serves")
            memberships = pool_members(run.outputs)
            wanted = [Component(ComponentKind.model, m) for m in run.served_models if m not in changed]
            wanted += [
                Component(ComponentKind.pool, p)
                for p, members in sorted(memberships.items())
                if not changed & set(members)
            ]
            unchanged[stack] = {piece: store.get(stack, piece, manifests, memberships) for piece in wanted}
            for piece, found in unchanged[stack].items():
                if found is None:
                    # A pool is declared with any of its members.
                    missing.add(piece.name if piece.kind is ComponentKind.model else min(memberships[piece.name]))
    if missing:
        # The first plan of these models and pools under this program: declare them once, and keep them.
        again = [stack for stack, found in unchanged.items() if None in found.values()]
        runs |= _declare_missing(root, again, changed | missing, store, manifests, runs, unchanged, jobs)
    whole: dict[str, OfflineRun] = {}
    pieces_by_stack: dict[str, dict[Component, list[DeclaredResource]]] = {}
    for stack, run in runs.items():
        memberships = pool_members(run.outputs)
        declared = pieces(run)
        for piece, resources in declared.items():
            if unchanged[stack].get(piece) is None:
                # Kept for later plans; the head's version of a changed model (or of its pool) is
                # the base's once the change is merged.
                store.put(stack, piece, manifests, memberships, resources)
        found = {
            piece: cached if cached is not None else declared.get(piece, [])
            for piece, cached in unchanged[stack].items()
        }
        pieces_by_stack[stack] = found
        whole[stack] = assemble(run, found)
        store.put_skeleton(run, manifests)
    return whole, pieces_by_stack


def _declare_missing(
    root: Path,
    stacks: Sequence[str],
    only: Collection[str],
    store: PieceStore,
    manifests: Mapping[str, str],
    taken: Mapping[str, OfflineRun],
    unchanged: dict[str, dict[Component, list[DeclaredResource] | None]],
    jobs: int,
) -> dict[str, OfflineRun]:
    """Runs of `stacks` declaring `only` too. With `jobs` 2, a cache and two stacks or more, a
    forked child (scripts/modelctl/forked.py) shares the stacks with this process, one at a time,
    and keeps the pieces of those it declares in the cache; they are then read back into
    `unchanged` as a warm plan reads them, and what it did not keep is declared here. Their runs
    stay the ones `taken` already (the platform and the changed models), as on a warm cache."""

    def run(names: Sequence[str]) -> dict[str, OfflineRun]:
        return snapshot.take(root, names, short_lived=True, only_models=only).runs

    if not (jobs >= 2 and store.cache is not None and len(stacks) >= 2 and forked.available()):
        return run(stacks)
    runs: dict[str, OfflineRun] = {}
    with forked.Claims() as claims:

        def declare_and_keep() -> None:  # in the child: from the last stack on
            for index in reversed(range(len(stacks))):
                if claims.take(index):
                    for declared in run([stacks[index]]).values():
                        store.put_run(declared, manifests)

        child = forked.Forked(declare_and_keep)
        try:
            for index, stack in enumerate(stacks):
                if claims.take(index):
                    runs |= run([stack])
        except BaseException:
            child.stop()  # this plan fails: nothing of it runs on behind its back
            raise
        kept = child.succeeded()
    delegated = [stack for stack in stacks if stack not in runs]
    if kept:
        with _cyclic_gc_paused():
            for stack in delegated:
                memberships = pool_members(taken[stack].outputs)
                unchanged[stack] = {
                    piece: found if found is not None else store.get(stack, piece, manifests, memberships)
                    for piece, found in unchanged[stack].items()
                }
    left = [stack for stack in delegated if None in unchanged[stack].values()]
    return runs | (run(left) if left else {})


def head_side(root: Path, stacks: Sequence[str], scope: Scope, cache: PlanCache | None) -> dict[str, OfflineRun]:
    """The head's whole stacks of an incremental plan, exactly as `incremental_runs` gives them
    (the policy worker checks these for its stacks while the plan runs)."""
    assert scope.base is not None
    return head_runs(root, stacks, scope, PieceStore(cache, scope.base.program_digest()))[0]


@contextmanager
def _cyclic_gc_paused():
    """Read a fleet's resources without the cyclic garbage collector, then freeze them.

    Reading a thousand models' resources allocates millions of objects that live until the
    plan ends; each full collection would scan them all again (the same effect, and remedy, as
    `infra.offline._cyclic_gc_paused`). Frozen, later collections skip them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def base_snapshot(
    root: Path,
    base_ref: str,
    stacks: Sequence[str],
    scope: Scope,
    cache: PlanCache | None,
    companions: Collection[str] = (),
) -> snapshot.Snapshot:
    """The base side: the platform, the changed models, and the pools of those and of
    `companions` (see `pool_companions`), as the base declares them.

    From the plan cache when an earlier plan stored them: the plan whose head this base was
    (the pull request that merged it, or a plan of the base itself) left every stack's skeleton
    and every model's resources, keyed by the program, the stack and the manifests, so nothing
    runs. Otherwise run, and stored the same way for the next plan.

    Its program is the head's, file for file (else the plan would not be incremental): when this
    process runs the head's program, it runs the base's too, on the base's files; otherwise
    the base runs from its worktree in a subprocess, as in a full plan.
    """
    assert scope.base is not None
    store = PieceStore(cache, scope.base.program_digest())
    label = f"base {base_ref}"
    derived = store.base_of(stacks, scope, label, companions)
    if derived is not None:
        return derived
    declared = scope.changed_models | set(companions)
    if snapshot.runs_here(root):
        taken = snapshot.of_revision_here(root, base_ref, stacks, only_models=declared)
    else:
        taken = snapshot.of_revision(root, base_ref, stacks, only_models=declared)
    manifests = scope.base.manifests()
    for run in taken.runs.values():
        store.put_run(run, manifests)
    return taken


def incremental_runs(
    root: Path, base_ref: str, stacks: Sequence[str], scope: Scope, cache: PlanCache | None, jobs: int = 1
) -> tuple[dict[str, OfflineRun], dict[str, OfflineRun]]:
    """(base, head) whole stacks of an incremental plan; `jobs`: see `head_runs`."""
    assert scope.base is not None
    store = PieceStore(cache, scope.base.program_digest())
    companions = pool_companions(root, stacks, scope.changed_models)
    if snapshot.runs_here(root):
        head, unchanged = head_runs(root, stacks, scope, store, jobs)
        base = base_snapshot(root, base_ref, stacks, scope, cache, companions)
    else:
        # The base runs in its own worktree and subprocess: let it run on the other core while
        # this process runs the head and reads the cache (the thread mostly waits on the child).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-base") as pool:
            base_future = pool.submit(base_snapshot, root, base_ref, stacks, scope, cache, companions)
            head, unchanged = head_runs(root, stacks, scope, store, jobs)
            base = base_future.result()
    return {stack: assemble(base.runs[stack], unchanged[stack]) for stack in stacks}, head
