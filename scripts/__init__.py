"""Launch scripts: run train.py on Cloud TPU VMs from a workstation (see scripts/README.md)."""
