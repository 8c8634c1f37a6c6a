"""Cost in the plan: the stack's price table, the arithmetic, a pooled model's share, and what the plan,
`modelctl status` and the catalog show."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from infra.spec.instances import INSTANCE_TYPES
from infra.spec.settings import load_stack_settings
from scripts.modelctl import cost
from scripts.modelctl.cli import main
from scripts.modelctl.plan import Capacity
from tests.conftest import ROOT, edit_yaml
from tests.test_plan import git, repo  # noqa: F401  (repo is a fixture)

GIB = 2**30
PLAN_SCHEMA = json.loads((ROOT / "scripts" / "modelctl" / "plan.schema.json").read_text())


def run(root: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--root", str(root), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def set_prices(root: Path, stack: str, change) -> None:
    edit_yaml(root / "stacks" / f"Pulumi.{stack}.yaml", lambda d: change(d["config"]["model-serving:prices"]))


# The price table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stack", "change", "field", "message"),
    [
        ("eks", lambda p: p["instances"].pop("g5.xlarge"), "prices.instances", "cluster.eks.gpuNodes"),
        ("eks", lambda p: p.update(source=""), "prices.source", "at least 1 character"),
        ("eks", lambda p: p["instances"].update({"x9.huge": 1.0}), "prices.instances.x9.huge", "unknown instance"),
        ("eks", lambda p: p.update(cpuCoreHour=0.03), "prices.instances", "not both"),
        ("prod", lambda p: p.update(date="17/06/2026"), "prices.date", "ISO date"),
        ("prod", lambda p: p.pop("memoryGibHour"), "prices.memoryGibHour", "required"),
        ("prod", lambda p: p.update(instances={"m7i.xlarge": 0.2}), "prices.instances", "not both"),
        ("prod", lambda p: p.update(cpuCoreHour=-1), "prices.cpuCoreHour", "greater than or equal to 0"),
    ],
)
def test_a_bad_price_table_names_the_file_and_the_field(project, capsys, stack, change, field, message):
    set_prices(project, stack, change)
    code, _, err = run(project, capsys, "validate")
    assert code == 1
    line = next(line for line in err.splitlines() if f"model-serving:{field}:" in line)
    assert line.startswith(f"stacks/Pulumi.{stack}.yaml: config.model-serving:{field}: ")
    assert message in line
    assert "Traceback" not in err


def test_an_unquoted_date_is_refused_with_the_fix(project, capsys):
    path = project / "stacks" / "Pulumi.prod.yaml"
    path.write_text(path.read_text().replace('date: "2026-12-07"', "date: 2026-12-07"))
    code, _, err = run(project, capsys, "plan", "--stack", "prod")
    assert code == 1
    assert 'config.model-serving:prices.date: write the date quoted: date: "2026-12-07"' in err
    assert "Traceback" not in err


def test_an_existing_cluster_with_gpu_nodes_needs_a_gpu_price(project, capsys):
    edit_yaml(
        project / "stacks" / "Pulumi.prod.yaml",
        lambda d: d["config"].update({"model-serving:cluster": {"gpuNodes": True}}),
    )
    code, _, err = run(project, capsys, "validate")
    assert code == 1
    assert "stacks/Pulumi.prod.yaml: config.model-serving:prices.gpuHour: required: the cluster has GPU nodes" in err


def test_the_stacks_prices_say_where_they_come_from():
    for stack in ("eks", "local", "prod"):
        prices = load_stack_settings(ROOT, stack).prices
        assert prices is not None and prices.source.strip() and prices.date
    assert load_stack_settings(ROOT, "dev").prices is None


# The arithmetic -------------------------------------------------------------------------------


def test_per_unit_price_of_a_pod():
    prices = load_stack_settings(ROOT, "prod").prices.model_copy(
        update={"cpu_core_hour": 0.04, "memory_gib_hour": 0.005, "gpu_hour": 0.9}
    )
    assert cost.unit_hourly(0.5, 2 * GIB, 0, prices) == pytest.approx(0.5 * 0.04 + 2 * 0.005)
    assert cost.unit_hourly(1, GIB, 1, prices) == pytest.approx(0.04 + 0.005 + 0.9)


def test_eks_prices_a_pod_by_its_dominant_share_of_the_instance():
    c7i = INSTANCE_TYPES["c7i.2xlarge"]  # 8 vCPU, 16 GiB
    assert cost.instance_share_hourly(2, 2 * GIB, 0, c7i, 0.4) == pytest.approx(0.4 * 2 / 8)  # CPU dominates
    assert cost.instance_share_hourly(0.5, 8 * GIB, 0, c7i, 0.4) == pytest.approx(0.4 * 8 / 16)  # memory
    g5 = INSTANCE_TYPES["g5.xlarge"]  # 4 vCPU, 16 GiB, 1 GPU
    assert cost.instance_share_hourly(1, 4 * GIB, 1, g5, 1.0) == pytest.approx(1.0)  # the whole GPU
    with pytest.raises(ValueError, match="no GPU"):
        cost.instance_share_hourly(1, GIB, 1, c7i, 0.4)


def test_monthly_cost_follows_the_stacks_own_prices():
    settings = load_stack_settings(ROOT, "eks")
    capacity = Capacity(min_replicas=2, max_replicas=5, cpu=1.0, memory=1 * GIB)
    hourly = settings.prices.instances["c7i.2xlarge"] / 8  # CPU share 1/8 > memory share 1/16
    assert cost.monthly(capacity, settings) == pytest.approx((2 * hourly * 730, 5 * hourly * 730))
    gpu = Capacity(min_replicas=1, max_replicas=1, cpu=1.0, memory=GIB, gpu=1)
    assert cost.monthly(gpu, settings)[0] == pytest.approx(settings.prices.instances["g5.xlarge"] * 730)
    prod = load_stack_settings(ROOT, "prod")
    per_pod = prod.prices.cpu_core_hour + prod.prices.memory_gib_hour
    assert cost.monthly(capacity, prod) == pytest.approx((2 * per_pod * 730, 5 * per_pod * 730))


def test_a_pooled_models_share_of_its_pool():
    # Pod memory 10 GiB; members 2 and 4 GiB; base 4 GiB shared by the two members.
    shares = cost.member_shares(10 * GIB, {"a": 2 * GIB, "b": 4 * GIB})
    assert shares == pytest.approx({"a": (2 + 2) / 10, "b": (2 + 4) / 10})
    assert sum(shares.values()) == pytest.approx(1)
    assert cost.member_shares(3 * GIB, {"only": 3 * GIB}) == pytest.approx({"only": 1})
    with pytest.raises(ValueError, match="exceeds"):
        cost.member_shares(GIB, {"a": GIB, "b": 1})


def test_a_pool_is_priced_whole_and_each_member_gets_its_share():
    settings = load_stack_settings(ROOT, "prod")
    pool = Capacity(2, 4, cpu=2.0, memory=8 * GIB, members=(("a", 1 * GIB), ("b", 3 * GIB)))
    alone = Capacity(1, 1, cpu=0.5, memory=GIB)
    stack = cost.stack_cost("prod", {"shared": pool, "b": alone}, settings)
    rows = stack.rows()
    whole = cost.monthly(pool, settings)
    assert rows[("pool", "shared")].monthly == pytest.approx(whole)
    assert rows[("member", "a")].monthly == pytest.approx([m * (2 + 1) / 8 for m in whole])
    assert rows[("member", "b")].pool == "shared"
    # The total counts the pool once; a model's cost is its own workload plus its share.
    assert stack.total() == pytest.approx([w + a for w, a in zip(whole, cost.monthly(alone, settings), strict=True)])
    assert stack.per_model()["b"] == pytest.approx(
        [w * (2 + 3) / 8 + a for w, a in zip(whole, cost.monthly(alone, settings), strict=True)]
    )


def test_every_track_of_a_model_is_counted_and_its_cost_is_the_models():
    """A model's canary (and shadow) is a workload of its own: the plan counts each with the
    autoscaler that scales it, and the model's cost is the sum of its workloads."""
    from infra.offline import run_stack
    from scripts.modelctl.plan import capacity

    dev = capacity(run_stack(ROOT, "dev"))  # iris and taxi-fare each run a canary in dev
    assert {"iris", "iris-canary", "taxi-fare", "taxi-fare-canary"} <= set(dev)
    assert dev["iris-canary"].model == "iris" and dev["iris"].model is None
    assert (dev["iris-canary"].min_replicas, dev["iris-canary"].max_replicas) == (1, 4)
    settings = load_stack_settings(ROOT, "prod")  # priced; the same workloads priced there
    stack = cost.stack_cost("prod", {k: dev[k] for k in ("iris", "iris-canary")}, settings)
    assert stack.per_model()["iris"] == pytest.approx(
        [
            a + b
            for a, b in zip(
                cost.monthly(dev["iris"], settings), cost.monthly(dev["iris-canary"], settings), strict=True
            )
        ]
    )
    document = cost.as_json(stack, stack)
    assert {"name": "iris-canary", "kind": "model", "model": "iris"}.items() <= next(
        c for c in document["components"] if c["name"] == "iris-canary"
    ).items()


def test_without_prices_the_stack_has_capacity_only():
    stack = cost.stack_cost("dev", {"iris": Capacity(1, 2, 0.25, GIB)}, load_stack_settings(ROOT, "dev"))
    assert stack.total() is None and stack.rows()[("model", "iris")].cpu == (0.25, 0.5)
    assert stack.notes == ("no price table in stack dev (model-serving:prices): capacity only",)


def test_change_words():
    assert cost.change((10, 20), (22.4, 32.4), "USD") == "+$12.40/month"
    assert cost.change((10, 20), (10, 15), "EUR") == "no change at minimum replicas, −5.00 EUR at maximum"
    assert cost.change((10, 20), (10, 20), "USD") == "no change"


# In the plan ----------------------------------------------------------------------------------


# `repo` (a one-commit copy of the project) and `git` are test_plan's.


def _more_iris(root: Path) -> None:
    edit_yaml(
        root / "models" / "iris.yaml",
        lambda d: d["environments"]["prod"].update(
            {"autoscaling": {"min_replicas": 3, "max_replicas": 8}, "resources": {"cpu": "500m", "memory": "512Mi"}}
        ),
    )


def test_a_plan_shows_the_change_in_cost(repo, capsys):  # noqa: F811
    base_pod = (0.25, 0.25)  # iris in prod: 250m CPU, 256Mi
    _more_iris(repo)
    prices = load_stack_settings(repo, "prod").prices

    def month(pod, replicas):
        return (pod[0] * prices.cpu_core_hour + pod[1] * prices.memory_gib_hour) * 730 * replicas

    before = (month(base_pod, 2), month(base_pod, 6))
    after = (month((0.5, 0.5), 3), month((0.5, 0.5), 8))
    code, out, err = run(repo, capsys, "plan", "--stack", "prod", "--base", "HEAD", "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    jsonschema.validate(document, PLAN_SCHEMA)
    iris = next(c for c in document["cost"]["components"] if c["name"] == "iris")
    assert iris["before"]["monthly"] == pytest.approx({"min": before[0], "max": before[1]}, abs=1e-3)
    assert iris["after"]["monthly"] == pytest.approx({"min": after[0], "max": after[1]}, abs=1e-3)
    change = document["cost"]["change"]
    assert change == pytest.approx({"min": after[0] - before[0], "max": after[1] - before[1]}, abs=1e-3)
    assert document["cost"]["source"] == prices.source and document["cost"]["date"] == prices.date

    code, out, _ = run(repo, capsys, "plan", "--stack", "prod", "--stack", "dev", "--base", "HEAD", "--format", "text")
    assert code == 0
    assert "    model  replicas" in out and "CPU (cores)" in out  # the capacity table's headings
    words = cost.change(before, after, "USD")
    assert "  cost per month: " in out and words in out
    assert f"    iris  {cost.money_span(before, 'USD')}" in out
    assert "  cost: no price table in stack dev (model-serving:prices): capacity only" in out

    code, out, _ = run(repo, capsys, "plan", "--stack", "prod", "--base", "HEAD", "--format", "markdown")
    assert code == 0
    assert "Estimated cost per month: **" in out
    assert "| model or pool | before | after | change |" in out
    row = next(line for line in out.splitlines() if line.startswith("| `iris` | \\$"))
    assert cost.money(after[1], "USD").replace("$", "\\$").replace(".", "\\.") in row


def test_the_cost_is_computed_not_written_down(repo, capsys):  # noqa: F811
    """Doubling the stack's prices doubles every figure: nothing is a constant."""
    _more_iris(repo)

    def iris_after() -> dict:
        code, out, err = run(repo, capsys, "plan", "--stack", "prod", "--base", "HEAD", "--format", "json")
        assert code == 0, err
        return next(c for c in json.loads(out)["cost"]["components"] if c["name"] == "iris")["after"]["monthly"]

    first = iris_after()
    set_prices(repo, "prod", lambda p: p.update(cpuCoreHour=p["cpuCoreHour"] * 2, memoryGibHour=p["memoryGibHour"] * 2))
    assert iris_after() == pytest.approx({k: 2 * v for k, v in first.items()}, rel=1e-3)


# Status and the catalog -----------------------------------------------------------------------


def test_status_and_the_catalog_show_the_cost_per_model(project, capsys, tmp_path):
    code, out, _ = run(project, capsys, "status", "--stack", "prod", "--format", "json")
    assert code == 0
    document = json.loads(out)
    settings = load_stack_settings(project, "prod")
    iris = next(m for m in document["models"] if m["name"] == "iris")
    per_pod = (0.25 * settings.prices.cpu_core_hour + 0.25 * settings.prices.memory_gib_hour) * 730
    assert iris["cost"]["prod"] == pytest.approx({"min": 2 * per_pod, "max": 6 * per_pod}, abs=1e-3)
    assert document["prices"]["prod"]["source"] == settings.prices.source

    code, out, _ = run(project, capsys, "status", "--stack", "prod")
    assert f"prod   {cost.money_span((2 * per_pod, 6 * per_pod), 'USD')}" in out
    code, out, _ = run(project, capsys, "status", "--stack", "dev")
    assert "cost: no price table in stack dev (model-serving:prices)" in out

    set_prices(project, "prod", lambda p: p.update(source="<script>alert(1)</script>"))
    assert run(project, capsys, "catalog", "--out", str(tmp_path / "site"))[0] == 0
    page = (tmp_path / "site" / "models" / "iris.html").read_text()
    assert "Estimated cost" in page
    assert f"<td>{cost.money_span((2 * per_pod, 6 * per_pod), 'USD')}</td>" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_price_source_cannot_break_the_comment(repo, capsys):  # noqa: F811
    set_prices(repo, "prod", lambda p: p.update(source="x\n\n## Approved | `@admin` <img src=x>"))
    git(repo, "commit", "-qam", "hostile source")
    _more_iris(repo)
    code, out, _ = run(repo, capsys, "plan", "--stack", "prod", "--base", "HEAD", "--format", "markdown")
    assert code == 0
    assert not any(line.startswith("## Approved") for line in out.splitlines())
    assert "\\<img src\\=x\\>" in out and " <img" not in out and "@admin" not in out


def test_yaml_of_the_stacks_keeps_the_dates_as_strings():
    for stack in ("eks", "local", "prod"):
        config = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
        assert isinstance(config["model-serving:prices"]["date"], str)
