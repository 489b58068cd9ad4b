"""FLOPs / parameter counts of any registered model: the report type and the CLI.

Each family counts its own models analytically from the config (``Family.count_flops``: the CondenseNet
rules in ``ppcdnv2.families.condensenet.flops``, ReXNet's in ``ppcdnv2.families.rexnet.flops``), so
the published figures are pinned by tests without torch and every term is visible. ``count_flops``
dispatches through the registry; ``python -m ppcdnv2.flops NAME ...`` prints the reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

__all__ = ["FlopsReport", "LayerCount", "count_flops", "conv_out", "sum_counts"]


@dataclass
class LayerCount:
    """One row of the breakdown: a stem, a dense block, a transition or the head."""

    name: str
    flops: float = 0.0
    params: float = 0.0  # official rule (training form, learned layers divided by their factor)
    converted_params: int = 0  # what the condensed model really holds
    extras: Dict[str, int] = field(default_factory=dict)

    def add(self, other: "LayerCount") -> None:
        self.flops += other.flops
        self.params += other.params
        self.converted_params += other.converted_params
        for k, v in other.extras.items():
            self.extras[k] = self.extras.get(k, 0) + v


@dataclass
class FlopsReport:
    """Counts per image. ``params`` is the official figure for ``form="train"`` and the real parameter
    count of the condensed model for ``form="converted"``; ``official_params`` is always the former."""

    name: str
    form: str
    input_size: int
    flops: float
    params: float
    official_params: float
    converted_params: int
    executed: Dict[str, float]
    layers: List[LayerCount]
    counting: str = "the official counter's rules"
    form_pair: bool = True  # whether the family has a condensed form (a second params column)
    published: Optional[Tuple[float, float]] = None  # (M multiply-adds, M params) as published
    published_form: str = "train"  # the form those were counted on
    executed_title: str = "also executed, not in the published counting (M per image):"

    @property
    def mflops(self) -> float:
        return self.flops / 1e6

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def __str__(self) -> str:
        first = f"{self.name}: {self.flops / 1e6:.2f} M multiply-adds, {self.params / 1e6:.3f} M params"
        first += f" ({self.form} form, {self.input_size}x{self.input_size}, per image; {self.counting})"
        if self.published is not None:
            on = f" ({self.published_form} form)" if self.form_pair else ""
            first += f"; published{on}: {self.published[0]:.2f} M / {self.published[1]:.3f} M"
        rows = [first, f"{'part':<14}{'MACs (M)':>12}{'params (M)':>12}"]
        if self.form_pair:
            rows[-1] += f"{'params (M)':>12}"
            rows.append(f"{'':<14}{'':>12}{'train form':>12}{'condensed':>12}")
        rows.append("-" * 50)
        for lc in self.layers:
            rows.append(f"{lc.name:<14}{lc.flops / 1e6:>12.3f}{lc.params / 1e6:>12.4f}"
                        + (f"{lc.converted_params / 1e6:>12.4f}" if self.form_pair else ""))
        rows.append("-" * 50)
        rows.append(f"{'total':<14}{self.flops / 1e6:>12.2f}{self.official_params / 1e6:>12.3f}"
                    + (f"{self.converted_params / 1e6:>12.3f}" if self.form_pair else ""))
        if self.executed:
            rows.append(self.executed_title)
            for k, v in self.executed.items():
                rows.append(f"  {k:<28}{v / 1e6:>12.3f}")
        return "\n".join(rows)


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def sum_counts(layers: List[LayerCount]) -> LayerCount:
    total = LayerCount("total")
    for lc in layers:
        total.add(lc)
    return total


def count_flops(model: Union[str, Any], form: Optional[str] = None, input_size: Optional[int] = None) -> FlopsReport:
    """Count any registered model per image: a registry name (``converted_*`` → converted form) or a
    config object of a registered family (``form`` defaults to ``train``). The family's own counter
    does the work (``Family.count_flops``); its published figures are attached."""
    from .registry import family_of, model_entry

    if isinstance(model, str):
        entry = model_entry(model)
        family, cfg, name = entry.family, entry.family.preset(entry.preset), model
        form = form or entry.form
    else:
        family, cfg, name = family_of(model), getattr(model, "cfg", model), None
        form = form or getattr(model, "form", "train")
    if form not in family.forms_of(cfg):
        raise ValueError(f"form must be one of {family.forms_of(cfg)}, got {form!r}")
    report = family.count_flops(cfg, form, input_size)
    if name:
        report.name = name
    info = family.weights_info(cfg)
    if info.mflops is not None and input_size in (None, info.crop):
        report.published, report.published_form = (info.mflops, info.mparams), info.published_form
    return report


def main(argv=None) -> int:
    """``python -m ppcdnv2.flops NAME [NAME ...]``: FLOPs/params of registered models of any family."""
    import argparse

    from .registry import list_models

    p = argparse.ArgumentParser(prog="python -m ppcdnv2.flops", description=main.__doc__.split(":", 1)[1].strip())
    p.add_argument("names", nargs="*", metavar="NAME", default=["cdnv2_a", "cdnv2_b", "cdnv2_c"],
                   help="registry names (training or converted_ form); default: cdnv2_a cdnv2_b cdnv2_c")
    p.add_argument("--input-size", type=int, default=None, help="image side (default: the model's own)")
    args = p.parse_args(argv)
    for name in args.names:
        try:
            report = count_flops(name, input_size=args.input_size)
        except KeyError:
            p.error(f"unknown model {name!r}; known: {', '.join(list_models())}")
        except ValueError as e:
            p.error(f"{name}: {e}")
        print(report)
        print()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
