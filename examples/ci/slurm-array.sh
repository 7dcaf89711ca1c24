#!/bin/bash
# A Slurm job array fetching one ImmPort mirror in shards: task K of N takes its
# share of the files (`--shard K/N`) into the shared destination. Submit it, then
# merge the shard states once every task is done:
#   jobid=$(sbatch --parsable examples/ci/slurm-array.sh manifest.yaml)
#   sbatch --dependency=afterok:$jobid --wrap "immsync merge-shards manifest.yaml && immsync verify manifest.yaml"
# Credentials: export IMMPORT_API_KEY_FILE=~/.config/immport/immport-key.json (the key
# file ImmPort's web site gives you; chmod 600) before sbatch: the environment is
# passed on to every task.
#SBATCH --job-name=immsync
#SBATCH --array=1-8
#SBATCH --cpus-per-task=2
#SBATCH --time=12:00:00
set -euo pipefail
manifest="${1:-manifest.yaml}"
immsync apply "$manifest" --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"
