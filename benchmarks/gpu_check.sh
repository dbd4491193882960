#!/usr/bin/env bash
# Every GPU figure of docs/performance.md, prepared to run in two device calls: the device time is short.
#
#   (a prepared .gpu/ folder with the dependencies: the GPU machine cannot install them; ignored by git)
#   # then, on the GPU machine (the device tool: carry [".gpu"], timeout_s 600):
#   source .gpu/activate.sh; bash benchmarks/gpu_check.sh profile memory     # one call, <= 400 s
#   source .gpu/activate.sh; bash benchmarks/gpu_check.sh compile            # then, time allowing, <= 480 s
#   source .gpu/activate.sh; bash benchmarks/gpu_check.sh bf16               # another, <= 580 s
# (a device call runs at most 600 s; name no stage to run them all where there is no such limit)
#
# Stages (all when none is named), each bounded by its own timeout so that one that runs
# long leaves the others their time. Everything is written under $WORK (default /tmp/gpu-check);
# the few files worth bringing back (the log with each command's last lines, the JSON figures, the
# benchmark tables: at most 8, as the device tool returns) are copied to $OUT (default runs/gpu-check):
#   profile  fire profile of experiments/phantom2d_gpu.yaml (width 32, batch 16): loader samples/s,
#            iterations/s, peak memory, inference ms; fp32, then trainer.precision=bf16-mixed
#            (about 3 minutes)
#   memory   benchmarks/activation_memory.py at paper width: 3D 176 x 176 x 112, width 64, batch 1,
#            plain and checkpointed in chunks of one sample (model.checkpoint_chunk=1): step seconds,
#            torch.cuda.max_memory_allocated, the counted tensor peak (to set against the fake-tensor
#            projection) and inference ms (about 3 minutes)
#   compile  the same profile with trainer.compile=true (torch.compile of the training forward +
#            loss, one graph), default mode, then mode reduce-overhead (CUDA graphs): the step is
#            bound by dispatching ~4 000 small ops, which capture should remove (about 8 minutes)
#   bf16     the demo model trained in fp32 and in bf16-mixed, each benchmarked on the 120 test
#            pairs without ANTs: is Dice the same within run-to-run noise? (about 6 minutes)
set -u
out=${OUT:-runs/gpu-check}
work=${WORK:-/tmp/gpu-check}
mkdir -p "$out" "$work"
stages=${*:-profile memory compile bf16}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log() { echo "== $(date +%T) $*" | tee -a "$out/gpu_check.log"; }
run() {  # run LIMIT_S NAME CMD...: its output into $work/NAME.log, its exit status and last lines logged
  local limit=$1 name=$2; shift 2
  log "$name: $*"
  timeout "$limit" "$@" > "$work/$name.log" 2>&1
  log "$name: exit $? (last lines below)"
  tail -n 14 "$work/$name.log" | tee -a "$out/gpu_check.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

for stage in $stages; do
  case $stage in
    profile)
      for p in 32-true bf16-mixed; do
        run 100 "profile-$p" $py -m fire_lightning.cli profile experiments/phantom2d_gpu.yaml trainer.precision=$p \
          --steps 150 --warmup-steps 20 --loader-batches 60 --out "$work/profile-$p.json"
        cp "$work/profile-$p.json" "$out/" 2>/dev/null
      done ;;
    compile)
      for mode in default reduce-overhead; do
        run 240 "profile-compile-$mode" $py -m fire_lightning.cli profile experiments/phantom2d_gpu.yaml \
          trainer.compile=true trainer.compile_mode=$mode --steps 150 --warmup-steps 20 --loader-batches 10 \
          --out "$work/profile-compile-$mode.json"
        cp "$work/profile-compile-$mode.json" "$out/" 2>/dev/null
      done ;;
    memory)
      run 200 memory-3d-paper $py benchmarks/activation_memory.py --config experiments/mrbrains3d_t1_flair.yaml \
        --shape 176 176 112 --width 64 --steps 3 --device cuda --out "$work/memory-3d-paper.json" \
        model.checkpoint_chunk=1
      cp "$work/memory-3d-paper.json" "$out/" 2>/dev/null ;;
    bf16)
      for p in 32-true bf16-mixed; do
        run 170 "demo-$p" $py -m fire_lightning.cli train experiments/phantom2d.yaml trainer.precision=$p \
          model.channels_last=false trainer.num_threads=0 data.num_workers=4 explain.every_n_epochs=0 \
          trainer.progress_bar=false run.root="$work/runs" run.name="demo-$p"
        run 120 "bench-$p" $py -m fire_lightning.cli benchmark "$work/runs/demo-$p" --no-ants \
          --out "$work/bench-$p"
        cp "$work/bench-$p/results.md" "$out/results-$p.md" 2>/dev/null
      done
      grep -H "^| FIRE" "$out"/results-*.md 2>/dev/null | tee -a "$out/gpu_check.log" ;;
    *) echo "unknown stage '$stage' (profile, memory, compile, bf16)" >&2; exit 2 ;;
  esac
done
log "done"
