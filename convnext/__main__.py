"""Prints parameters and MACs of ConvNeXt variants; the roadmap beside the paper's Table 10.

python -m convnext                  # ConvNeXt T, S, B, L, XL
python -m convnext T roadmap_gelu   # some variants
python -m convnext --roadmap        # every roadmap step, ours beside Liu et al. 2022
"""

import argparse

from convnext.roadmap import PAPER_FIGURES, ROADMAP
from convnext.variants import ROADMAP_PREFIX, VARIANTS, canonical_name, create
from modeling.macs import abstract_variables, count_params, model_macs

SIZES = [name for name in VARIANTS if not name.startswith(ROADMAP_PREFIX)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ConvNeXt parameters and MACs.")
    parser.add_argument("variants", nargs="*", help=f"default: {SIZES}")
    parser.add_argument("--roadmap", action="store_true", help="every roadmap step, in order")
    parser.add_argument("--num_classes", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        names = [canonical_name(v) for v in args.variants]
    except ValueError as error:
        parser.error(str(error))
    if args.roadmap:
        names += [ROADMAP_PREFIX + step for step in ROADMAP]
    names = names or SIZES

    print(f"{'variant':<32} {'params':>12} {'px':>4} {'GMACs':>7} {'paper GMACs':>11} {'top-1':>6}")
    for name in names:
        model = create(name, num_classes=args.num_classes)
        params = count_params(abstract_variables(model, model.min_resolution)["params"])
        px = VARIANTS[name]["test_resolution"]
        gmacs = model_macs(model, px) / 1e9
        step = name.removeprefix(ROADMAP_PREFIX)
        paper = (
            f"{PAPER_FIGURES[step][0]:>11.2f} {PAPER_FIGURES[step][1]:>6.2f}"
            if step in ROADMAP
            else ""
        )
        print(f"{name:<32} {params:>12,} {px:>4} {gmacs:>7.3f} {paper}".rstrip(), flush=True)


if __name__ == "__main__":
    main()
