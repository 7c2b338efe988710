"""Rich renderings of results and config for the terminal (JSON output skips these)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from loyaltylens_core.kernel.contracts import PipelineResult


def result_panel(result: PipelineResult) -> Panel:
    p = result.propensity
    f = result.features
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("customer", f"{f.customer_id} ({f.tier}, prefers {f.channel_preference})")
    facts.add_row("propensity", f"{p.score:.3f} (label {p.label})")
    facts.add_row("model version", p.model_version)
    if result.copy_ is not None:
        facts.add_row("prompt version", result.copy_.prompt_version)
    if result.top_offer is not None:
        top = result.candidates[0]
        facts.add_row(
            "top offer",
            f"{top.offer.title} [{top.offer.category}] (similarity {top.similarity:.3f})",
        )
    if len(result.candidates) > 1:
        facts.add_row("also", "; ".join(c.offer.title for c in result.candidates[1:]))
    if result.decision is not None:
        facts.add_row("decision", decision_line(result))
    if result.fallbacks:
        facts.add_row("fallbacks", ", ".join(result.fallbacks))
    parts: list[Any] = [facts]
    if result.copy_ is not None:
        copy = Text()
        copy.append(result.copy_.headline + "\n", style="bold magenta")
        copy.append(result.copy_.body + "\n")
        copy.append(result.copy_.cta, style="bold green")
        parts.append(Panel(copy, title="offer copy", expand=False))
    latency = Table(title="latency (ms)", show_header=True, header_style="dim")
    for stage in result.latency_ms:
        latency.add_column(stage, justify="right")
    latency.add_row(*(f"{v:.2f}" for v in result.latency_ms.values()))
    parts.append(latency)
    plugins = ", ".join(f"{stage}={ref.name}" for stage, ref in result.plugins.items())
    parts.append(Text(f"plugins: {plugins}", style="dim"))
    return Panel(Group(*parts), title=f"LoyaltyLens · {result.customer_id}", subtitle=f"run {result.run_id[:8]}")


def decision_line(result: PipelineResult) -> str:
    """``placement app-banner (priority): 3 of 12 retrieved; dropped 2 capped_customer, 1 expired``."""
    d = result.decision
    assert d is not None
    line = f"placement {d.placement} ({d.ranking}): {len(d.chosen)} of {d.considered} retrieved"
    if d.dropped:
        line += "; dropped " + ", ".join(f"{n} {reason}" for reason, n in sorted(d.dropped.items()))
    return line


def config_tree(described: dict[str, Any]) -> Tree:
    tree = Tree(f"config file: {described.get('config_file') or '(none)'}")
    core = tree.add("core")
    for key, item in described["core"].items():
        core.add(f"{key} = {item['value']!r}  [dim]({item['source']})[/dim]")
    stages = tree.add("stages")
    for stage, item in described["stages"].items():
        stages.add(f"{stage} = {item['plugin']!r}  [dim]({item['source']})[/dim]")
    settings = tree.add("settings")
    for plugin, table in described["settings"].items():
        node = settings.add(plugin)
        for key, item in table.items():
            node.add(f"{key} = {item['value']!r}  [dim]({item['source']})[/dim]")
    if described.get("placements"):
        placements = tree.add("placements")
        for name, spec in described["placements"].items():
            placements.add(f"{name}: " + ", ".join(f"{k}={v!r}" for k, v in spec.items() if v is not None))
    if described.get("experiments"):
        experiments = tree.add("experiments")
        for name, experiment in described["experiments"].items():
            node = experiments.add(f"{name}  [dim](control: {experiment['control']})[/dim]")
            for variant, spec in experiment["variants"].items():
                pins = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "share" and v)
                node.add(f"{variant}: share {spec['share']:g}" + (f", {pins}" if pins else ""))
    return tree
