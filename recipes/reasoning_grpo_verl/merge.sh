#!/usr/bin/env bash
# Merge a verl FSDP checkpoint into a Hugging Face model folder (for vLLM and the harness).
#
#   bash recipes/reasoning_grpo_verl/merge.sh CHECKPOINT_DIR TARGET_DIR [STEP]
#
# CHECKPOINT_DIR is train.sh's CHECKPOINT_DIR (trainer.default_local_dir); STEP defaults to
# the newest (latest_checkpointed_iteration.txt).
set -euo pipefail
CHECKPOINT_DIR=${1:?checkpoint dir}
TARGET_DIR=${2:?target dir}
STEP=${3:-$(cat "$CHECKPOINT_DIR/latest_checkpointed_iteration.txt")}
exec "${PYTHON:-python3}" -m verl.model_merger merge --backend fsdp \
  --local_dir "$CHECKPOINT_DIR/global_step_$STEP/actor" --target_dir "$TARGET_DIR"
