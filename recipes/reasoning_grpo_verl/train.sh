#!/usr/bin/env bash
# VALOR-RL with verl 0.9.1: GRPO on Qwen3-8B with the verifier reward, the paper's
# hyperparameters (Table 10, appendix A.6.3) and the original launch's layout
# (8 GPUs, FSDP parameter and optimizer offload, vLLM rollouts). See README.md.
#
#   bash recipes/reasoning_grpo_verl/train.sh [extra Hydra overrides ...]
#
# Settings from the environment (defaults in brackets):
#   PROTOCOL [paper | harness]: the reward's rules and Qwen3's thinking (on under paper, as the original)
#   MODEL_PATH [Qwen/Qwen3-8B]   TRAIN_FILES [data/valor_train/train.parquet]   VAL_FILES [TRAIN_FILES]
#   TRAIN_BATCH_SIZE [64] prompts a step   ROLLOUT_N [5] rollouts a prompt   TOTAL_EPOCHS [4]
#   REWARD_CONFIG [recipes/reward_configs/gemini.yaml]   REWARD_MANAGER [naive | rate_limited]
#   REWARD_WORKERS [8]: reward worker processes (reward.num_workers); the reward YAML's verifier
#     max_concurrency is shared among them
#   REWARD_MAX_CONCURRENT [64] (rate_limited only): rollouts scored at once over all the workers
#   REWARD_LOG_DIR [CHECKPOINT_DIR/reward_log]: every rollout's reward parts (rollouts.jsonl)
#   RUN_ID [date-time-pid]: names this launch in the reward log
#   PROJECT [valor]   EXPERIMENT [valor-rl-qwen3-8b]   CHECKPOINT_DIR [checkpoints/$PROJECT/$EXPERIMENT]
#   NNODES [1]   GPUS_PER_NODE [8]   PYTHON [python3]
#   CHECK_COMPOSE [auto | always | never]: how check_config.py reads the overrides
# Extra arguments are Hydra overrides appended last (they win), e.g. trainer.save_freq=5.
# Change the batch, group size and epochs through the variables above, not as overrides: the
# reward log's steps are computed from them (check_config.py refuses a mismatch).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$REPO_ROOT/$1" ;; esac; }

PROTOCOL=${PROTOCOL:-paper}
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-8B}
TRAIN_FILES=$(absolute "${TRAIN_FILES:-data/valor_train/train.parquet}")
VAL_FILES=$(absolute "${VAL_FILES:-$TRAIN_FILES}")  # VALOR validated on its training set
REWARD_CONFIG=$(absolute "${REWARD_CONFIG:-recipes/reward_configs/gemini.yaml}")
REWARD_MANAGER=${REWARD_MANAGER:-naive}
PROJECT=${PROJECT:-valor}
EXPERIMENT=${EXPERIMENT:-valor-rl-qwen3-8b}
CHECKPOINT_DIR=$(absolute "${CHECKPOINT_DIR:-checkpoints/$PROJECT/$EXPERIMENT}")
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PYTHON=${PYTHON:-python3}
TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-64}
ROLLOUT_N=${ROLLOUT_N:-5}
TOTAL_EPOCHS=${TOTAL_EPOCHS:-4}
REWARD_WORKERS=${REWARD_WORKERS:-8}
REWARD_LOG_DIR=$(absolute "${REWARD_LOG_DIR:-$CHECKPOINT_DIR/reward_log}")
RUN_ID=${RUN_ID:-$(date +%Y%m%d-%H%M%S)-$$}
case "$PROTOCOL" in paper|harness) ;; *) echo "PROTOCOL must be paper or harness, got $PROTOCOL" >&2; exit 2 ;; esac

ARGS=(
  # GRPO: group-normalised outcome advantages, KL as a loss term (not in the reward)
  algorithm.adv_estimator=grpo
  algorithm.use_kl_in_reward=False
  algorithm.norm_adv_by_std_in_grpo=True

  # Data: 64 prompts a step; the system prompt is inside each row's `prompt` (upstream
  # verl has no system-prompt option).
  data.train_files="$TRAIN_FILES"
  data.val_files="$VAL_FILES"
  data.prompt_key=prompt
  data.train_batch_size="$TRAIN_BATCH_SIZE"
  data.max_prompt_length=6000
  data.max_response_length=2000
  data.filter_overlong_prompts=True
  data.truncation=error
  data.shuffle=True

  # Policy: full fine-tuning, AdamW lr 1e-6 (constant), weight decay 0.01, clip 0.2,
  # KL 0.01 (low_var_kl), one update per step (mini-batch = the 64 prompts), micro-batch 1.
  actor_rollout_ref.model.path="$MODEL_PATH"
  actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.optim.weight_decay=0.01
  actor_rollout_ref.actor.grad_clip=1.0
  actor_rollout_ref.actor.ppo_mini_batch_size="$TRAIN_BATCH_SIZE"
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1
  actor_rollout_ref.actor.ppo_epochs=1
  actor_rollout_ref.actor.use_kl_loss=True
  actor_rollout_ref.actor.kl_loss_coef=0.01
  actor_rollout_ref.actor.kl_loss_type=low_var_kl
  actor_rollout_ref.actor.clip_ratio=0.2
  actor_rollout_ref.actor.entropy_coeff=0
  actor_rollout_ref.actor.fsdp_config.param_offload=True
  actor_rollout_ref.actor.fsdp_config.optimizer_offload=True
  actor_rollout_ref.ref.fsdp_config.param_offload=True
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1

  # Rollouts: vLLM, 5 per prompt, temperature 1.0, top-p 1.0
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n="$ROLLOUT_N"
  actor_rollout_ref.rollout.temperature=1.0
  actor_rollout_ref.rollout.top_p=1.0
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.7
  actor_rollout_ref.rollout.enable_chunked_prefill=False
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1

  # The reward: OUR compute_score, under verl 0.9's keys (the legacy top-level
  # custom_reward_function.* and reward_model.reward_manager are ignored by 0.9), logging
  # every rollout's parts (verl 0.9 logs them only in validation, which is off).
  reward.custom_reward_function.path="$REPO_ROOT/harness/training/verl_reward.py"
  reward.custom_reward_function.name=compute_score
  +reward.custom_reward_function.reward_kwargs.config="$REWARD_CONFIG"
  +reward.custom_reward_function.reward_kwargs.protocol="$PROTOCOL"
  +reward.custom_reward_function.reward_kwargs.processes="$REWARD_WORKERS"
  +reward.custom_reward_function.reward_kwargs.log_dir="$REWARD_LOG_DIR"
  +reward.custom_reward_function.reward_kwargs.run="$RUN_ID"
  +reward.custom_reward_function.reward_kwargs.rollouts_per_step=$((TRAIN_BATCH_SIZE * ROLLOUT_N))
  +reward.custom_reward_function.reward_kwargs.checkpoint_dir="$CHECKPOINT_DIR"
  reward.reward_manager.name="$REWARD_MANAGER"
  reward.num_workers="$REWARD_WORKERS"

  # Trainer: 4 epochs (816 queries / 64 = 12 steps an epoch, 48 steps), a checkpoint every 10 steps
  trainer.total_epochs="$TOTAL_EPOCHS"
  trainer.critic_warmup=0
  trainer.project_name="$PROJECT"
  trainer.experiment_name="$EXPERIMENT"
  trainer.default_local_dir="$CHECKPOINT_DIR"
  trainer.nnodes="$NNODES"
  trainer.n_gpus_per_node="$GPUS_PER_NODE"
  trainer.save_freq=10
  trainer.test_freq=-1             # no validation: it would re-judge the training set (VALOR: every 10 steps)
  trainer.val_before_train=False
  trainer.logger='["console"]'     # add "wandb" to log there
)
if [ "$PROTOCOL" = harness ]; then
  ARGS+=(+data.apply_chat_template_kwargs.enable_thinking=False)  # ours: Qwen3 without thinking
fi
if [ "$REWARD_MANAGER" = rate_limited ]; then
  # The manager's limiter is per worker process (a class attribute in each Ray worker):
  # REWARD_MAX_CONCURRENT is the total, so each worker gets its share.
  ARGS+=("+reward.max_concurrent=$(( (${REWARD_MAX_CONCURRENT:-64} + REWARD_WORKERS - 1) / REWARD_WORKERS ))")
fi

# Refuse to start unless the reward that will run is ours (checked against verl's
# composed configuration when verl is installed; CHECK_COMPOSE=never checks the overrides only).
"$PYTHON" "$REPO_ROOT/recipes/reasoning_grpo_verl/check_config.py" --compose "${CHECK_COMPOSE:-auto}" \
  -- "${ARGS[@]}" "$@"

exec "$PYTHON" -m verl.trainer.main_ppo "${ARGS[@]}" "$@"
