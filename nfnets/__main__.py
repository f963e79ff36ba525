"""Prints parameters and MACs of NFNet variants beside the reference figures.

    python -m nfnets            # every variant (about a minute: each model is traced)
    python -m nfnets F0 F7+     # some
"""

import argparse

from modeling.macs import abstract_variables, count_params, model_macs
from nfnets.variants import VARIANTS, canonical_name, create

# 224 px is Smith et al.'s JFT pre-training resolution for the "+" variants.
PLUS_RESOLUTION = 224


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="NFNet parameters and MACs.")
    parser.add_argument("variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--num_classes", type=int, default=1000)
    args = parser.parse_args(argv)
    print(f"{'variant':<8} {'params':>14} {'test px':>8} {'GMACs':>9} {'GMACs@224':>10}")
    for variant in args.variants:
        name = canonical_name(variant)
        model = create(name, num_classes=args.num_classes)
        params = count_params(abstract_variables(model, resolution=32)["params"])
        px = PLUS_RESOLUTION if name.endswith("+") else VARIANTS[name]["test_resolution"]
        gmacs = model_macs(model, px) / 1e9
        gmacs224 = gmacs if px == 224 else model_macs(model, 224) / 1e9
        print(f"{name:<8} {params:>14,} {px:>8} {gmacs:>9.3f} {gmacs224:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
