"""Prints parameters and MACs of ViT variants at their reference resolution (224 px).

    python -m vit                       # every Xiao et al. variant and every big_vision size
    python -m vit C-4GF B/16 So400m/14  # some
    python -m vit So400m/14 --pool map  # with a field override

MACs exclude bias adds (see the package docstring); pycls's "flops" add them.
"""

import argparse

from modeling.macs import count_params, model_macs
from vit.model import abstract_params
from vit.variants import SIZES, VARIANTS, canonical_name, create

# Patch size shown for each big_vision size when no variant is named: Zhai et al. 2022 and
# Smith et al. 2023 compare g and G at patch 14, the others at 16 (So400m: 14).
DEFAULT_PATCH = {size: 14 if size in ("So400m", "H", "g", "G") else 16 for size in SIZES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ViT parameters and MACs.")
    default = [k for k in VARIANTS if "/" not in k and "tiny" not in k]
    default += [f"{size}/{patch}" for size, patch in DEFAULT_PATCH.items()]
    parser.add_argument("variants", nargs="*", default=default)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--pool", choices=("token", "gap", "map"), default=None)
    args = parser.parse_args(argv)
    overrides = {"pool": args.pool} if args.pool else {}
    print(f"{'variant':<10} {'params':>15} {'px':>5} {'GMACs':>9}")
    for variant in args.variants:
        name = canonical_name(variant)
        # Scanned blocks trace once, whatever the depth; counts are those of the plain model.
        model = create(name, num_classes=args.num_classes, scan=True, **overrides)
        px = VARIANTS[name]["resolution"]
        grid = (px // model.patch_size,) * 2
        params = count_params(abstract_params(model, grid))
        gmacs = model_macs(model, px) / 1e9
        print(f"{name:<10} {params:>15,} {px:>5} {gmacs:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
