#!/bin/sh
# Slurm Prolog (runs as root on the compute node): set the GPU power cap gsched chose for this job.
# Install: see slurm/README.md.
exec "${GSCHED_PYTHON:-python3}" -m scheduler.executor.slurm_prolog prolog
