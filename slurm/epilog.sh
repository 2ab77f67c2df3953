#!/bin/sh
# Slurm Epilog (runs as root on the compute node): restore the GPU power limits the Prolog changed.
# Install: see slurm/README.md.
exec "${GSCHED_PYTHON:-python3}" -m scheduler.executor.slurm_prolog epilog
