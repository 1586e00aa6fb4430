#!/usr/bin/env bash
# The accelerator benchmarks in one run, each bounded by its own time limit so that one slow part leaves the others
# their time. Parts ($PARTS, default "train pipeline"):
#   train     the LDM UNet training step in bfloat16 (bench/train_step.py): batch 16 ours alone, then batch 4 against
#             PyTorch eager; TFLOP/s and utilisation of the device's peak
#   pipeline  the pipeline end to end against diffusers (bench/pipeline.py): 16 prompts, float16, diffusers' UNet
#             through torch.compile
# Logs and JSON go to $1 (default bench-results/). docs/benchmarks.md has the figures and what the limits were.
#
#     bash bench/accelerator.sh [OUT_DIR]
#     PARTS=train bash bench/accelerator.sh $OUT
#     SMOKE=1 PYTHON=.venv/bin/python bash bench/accelerator.sh /tmp/smoke   # tiny models, to check it on a CPU
set -u
python=${PYTHON:-python3}
out=${1:-bench-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)" TORCHINDUCTOR_COMPILE_THREADS=$(nproc)
if [[ ${SMOKE:-0} == 1 ]]; then
  pipeline=(--tiny --duration 1.0 --dtype bf16) train=(--small --steps 2) limit_train_16=600 limit_train_4=600
  limit_pipeline=600
else
  # the base step did not compile within 245 s on an H200 (docs/benchmarks.md): give it most of a 10-minute call
  pipeline=(--dtype fp16) train=(--steps 20) limit_train_16=420 limit_train_4=170 limit_pipeline=320
fi
{ date -u; nvidia-smi -L 2>/dev/null; "$python" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), \
'torch', torch.__version__)"; } 2>&1 | tee "$out/versions.txt"

for part in ${PARTS:-train pipeline}; do
  case $part in
    train)
      timeout $limit_train_16 "$python" bench/train_step.py --dtype bf16 --batch 16 --skip-reference "${train[@]}" \
        --json "$out/train_b16.json" 2>&1 | tee "$out/train_step_b16.txt"
      timeout $limit_train_4 "$python" bench/train_step.py --dtype bf16 --batch 4 "${train[@]}" \
        --json "$out/train_b4.json" 2>&1 | tee "$out/train_step_b4.txt" ;;
    pipeline)
      # jax and torch share the card: jax takes half of it instead of its default 75 %
      XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout $limit_pipeline "$python" bench/pipeline.py --batch 16 --steps 20 \
        --torch-compile --repeats 3 "${pipeline[@]}" 2>&1 | grep --line-buffered -v "Writing model shards" \
        | tee "$out/pipeline_b16.txt" ;;
    *) echo "unknown part $part (train, pipeline)" >&2; exit 2 ;;
  esac
done
date -u | tee -a "$out/versions.txt"
