#!/usr/bin/env bash
# The model-level GPU table of issue 7: tokens/s and peak GPU memory of `qft train` for
# full, qlora and bnb_dora (QDoRA) on a random Llama-3-8B-shaped model (hidden 4096,
# intermediate 14336, 32 heads, 8 KV heads, head_dim 128, vocabulary 128256, rope theta
# 500000; no download), context 2048, batch 1, activation recomputation, 1 warm-up step
# then QFT_MODEL_BENCH_STEPS (3) timed steps; then PyTorch + PEFT (+ bitsandbytes) on the
# same shapes when the machine's python has them (bench/peft_model_bench.py).
#
# usage: bench/run_model_gpu.sh [BUILD_DIR]   (default build; from anywhere, but a relative
#   BUILD_DIR is taken from the repository root)
#   needs BUILD_DIR/apps/qft, the jsonl, lora, dora and bnb_nf4 plugins, and
#   core/cuda/libqft_cuda.so for the cuda backend. Environment:
#   QFT_MODEL_BENCH_BACKEND  cuda (default), or cpu / cpu_guard to check this script
#   QFT_MODEL_BENCH_SMALL=1  hidden 256, 2 layers, vocabulary 1024, context 256 (seconds
#                            on a CPU)
#   QFT_MODEL_BENCH_LAYERS   layers per train_type, "full=4 qlora=32 bnb_dora=32" by default
#   QFT_MODEL_BENCH_MATMUL   train.matmul_precision of the cuda runs: medium (bf16 tensor
#                            cores, the default), high (TF32) or highest (full fp32)
#   QFT_MODEL_BENCH_RESIDUAL train.residual_dtype of every run: bf16 (the default: the
#                            residual stream between blocks kept as bf16) or f32
#   QFT_MODEL_BENCH_TYPES    the train_types to run, "full qlora bnb_dora" by default
#   QFT_MODEL_BENCH_STEPS    timed steps (3; 0 runs the warm-up step alone, for the peak
#                            memory on cpu_guard, whose count stands in for the GPU's)
#   QFT_MODEL_BENCH_BUDGET   seconds for everything (150): runs still going are stopped
#                            then, and their rows say so
#   QFT_MODEL_BENCH_PYTHON   python for the PyTorch rows (python3); "none" skips them
#   QFT_MODEL_BENCH_TORCH_DRY=1  the PyTorch script's --dry-run (tiny, on the CPU), to
#                            check the scheduling on a machine without a GPU
#   QFT_MODEL_BENCH_DIR      where runs, logs and data go (BUILD_DIR/model-bench)
#
# Layers: qft builds a random model on the host (qft_llama_init_random, in parallel, two
# normals per Box-Muller step, then the quantizer): 22 s on 2 threads of the CI Xeon for
# 2 layers of these shapes (1.49G parameters, 1.05G of them the embedding and the head),
# so 32 layers (8.0G) take about a minute on 4 threads; QLoRA and QDoRA run all 32 layers.
# Full finetuning stores 16 bytes a parameter on the device (fp32 weights, gradients,
# AdamW's two moments; fp32 storage for all but frozen dense weights): 128.5 GB for 32
# layers before any activation, more than an H100 holds and too close to an H200's 141 GB
# to plan on (not tried): it runs 4. The three qft runs start together and build their
# models in parallel (4 threads each),
# and the GPU goes to one run at a time: a run that reaches its first step (the log's
# "model:" line, printed after the upload) while another trains is paused (SIGSTOP) until
# that one ends, then continued (SIGCONT); the PyTorch process waits for a go-file the same
# way, a row at a time (it prints READY i and waits for torch.go.i, then DONE i), so a qft
# run that finished building while a PyTorch row trained goes before the next PyTorch row.
# What a paused run had queued before the pause can still run on the GPU (well under a
# second), so a row whose timed steps saw another run reach that point says so.
#
# Measured per run: tokens/s = timed steps x batch x context / their time (metrics.jsonl's
# elapsed_s, after the warm-up step); every batch is context real tokens (a generated JSONL
# of long rows, byte tokenizer, truncated to the context), so this is also qft's own count.
# Peak GPU MiB: the CUDA backend's own count of the bytes it held through cudaMalloc at the
# worst moment (the run's "memory: CUDA device peak" line; no CUDA context), comparable to
# torch.cuda.max_memory_allocated; the notes add the process's largest used_memory seen by
# nvidia-smi (sampled every 250 ms; with the CUDA context) when nvidia-smi is there.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
build=${1:-build}
backend=${QFT_MODEL_BENCH_BACKEND:-cuda}
steps=${QFT_MODEL_BENCH_STEPS:-3}
budget=${QFT_MODEL_BENCH_BUDGET:-150}
py=${QFT_MODEL_BENCH_PYTHON:-python3}
out=${QFT_MODEL_BENCH_DIR:-$build/model-bench}
qft=$build/apps/qft
t_start=$(date +%s.%N)
deadline=$(awk -v s="$t_start" -v b="$budget" 'BEGIN { printf "%.3f", s + b - 4 }')

if [[ ${QFT_MODEL_BENCH_SMALL:-0} == 1 ]]; then
    hidden=256 inter=512 heads=4 kv=2 hd=64 vocab=1024 ctx=256 shape="Small test shapes"
    layers_spec=${QFT_MODEL_BENCH_LAYERS:-"full=2 qlora=2 bnb_dora=2"}
else
    hidden=4096 inter=14336 heads=32 kv=8 hd=128 vocab=128256 ctx=2048 shape="Llama-3-8B shapes"
    layers_spec=${QFT_MODEL_BENCH_LAYERS:-"full=4 qlora=32 bnb_dora=32"}
fi
batch=1
read -r -a types <<<"${QFT_MODEL_BENCH_TYPES:-full qlora bnb_dora}"
for t in "${types[@]}"; do
    [[ $t =~ ^(full|qlora|bnb_dora)$ ]] ||
        { echo "run_model_gpu: QFT_MODEL_BENCH_TYPES takes full, qlora and bnb_dora (got '$t')"; exit 2; }
done
declare -A layers torch_name=([full]=full [qlora]=qlora [bnb_dora]=qdora)
for kv_ in $layers_spec; do layers[${kv_%%=*}]=${kv_#*=}; done
for t in "${types[@]}"; do
    [[ ${layers[$t]:-} =~ ^[1-9][0-9]*$ ]] ||
        { echo "run_model_gpu: QFT_MODEL_BENCH_LAYERS needs $t=N (got '$layers_spec')"; exit 2; }
done
[[ -x $qft ]] || { echo "run_model_gpu: $qft not built"; exit 2; }
rm -rf "$out" && mkdir -p "$out" || exit 2

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# The data: long rows of letter words, so that every example is truncated to exactly the
# context (byte tokenizer: a token a byte) and the loss covers nearly all of it.
awk -v n=16 -v len=$(( ctx * 3 / 2 )) 'BEGIN {
    srand(42)
    for (r = 0; r < n; r++) {
        s = ""
        while (length(s) < len) {
            w = ""; k = 2 + int(rand() * 7)
            for (i = 0; i < k; i++) w = w sprintf("%c", 97 + int(rand() * 26))
            s = s w " "
        }
        printf "{\"q\": \"Row %d. Continue:\", \"a\": \"%s\"}\n", r, s
    }
}' >"$out/data.jsonl"

common=(--set "model.config.hidden_size=$hidden" --set "model.config.intermediate_size=$inter"
        --set "model.config.num_attention_heads=$heads" --set "model.config.num_key_value_heads=$kv"
        --set "model.config.head_dim=$hd" --set "model.config.vocab_size=$vocab"
        --set model.config.rope_theta=500000.0 --set model.config.max_position_embeddings=8192
        --set model.config.tie_word_embeddings=false
        --set "data={ plugin = \"jsonl\"; path = \"$out/data.jsonl\"; prompt_template = \"{q}\\n\"; response_field = \"a\"; context_length = $ctx; seed = 42; eval_holdout = 0; }"
        --set "train.batch_size=$batch" --set train.grad_accum=1
        --set train.max_steps=$(( steps + 1 )) --set train.log_every=1
        --set train.recompute=true --set train.backend="\"$backend\""
        --set output.save='"none"' --set 'output.log=["jsonl"]')
adapter_sets() { # the PyTorch rows' LoRA/DoRA: r 16, alpha 32, all 7 linears
    case $1 in
    qlora) echo "--set adapter.rank=16 --set adapter.alpha=32 --set adapter.dropout=0.05 --set adapter.target_modules=\"all-linear\"" ;;
    bnb_dora) echo "--set adapter.rank=16 --set adapter.alpha=32 --set adapter.dropout=0.0 --set adapter.target_modules=\"all-linear\"" ;;
    esac
    # the frozen embedding and head as bf16 on the device, as PyTorch holds them (the cpu
    # backend has no such copy and refuses the key)
    case $1 in qlora | bnb_dora) [[ $backend == cpu ]] || echo "--set train.frozen_dtype=\"bf16\"" ;; esac
    # the residual stream between blocks kept as bf16 (the PyTorch rows keep every
    # activation in bf16); all three runs
    echo "--set train.residual_dtype=\"${QFT_MODEL_BENCH_RESIDUAL:-bf16}\""
    # bf16 tensor cores for the fp32 GEMMs, fp32 accumulation, as PyTorch's bf16 rows
    # compute (QFT_MODEL_BENCH_MATMUL: "high" for TF32, "highest" for full fp32); cuda only
    if [[ $backend == cuda ]]; then
        echo "--set train.matmul_precision=\"${QFT_MODEL_BENCH_MATMUL:-medium}\""
    fi
}

# job tables: name -> pid, state (init|wait|gpu|ended), times
declare -A pid state t_launch t_ready t_gpu t_end rc_of unturned
jobs_=()
gpu_holder=""
queue=()
# shellcheck disable=SC2317 # called by the traps
cleanup() {
    for j in "${jobs_[@]}"; do
        if [[ ${state[$j]} != ended ]]; then kill -CONT "${pid[$j]}" 2>/dev/null; kill -TERM "${pid[$j]}" 2>/dev/null; fi
    done
    [[ -n ${smi_pid:-} ]] && kill "$smi_pid" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 143' TERM INT

smi_pid=""
if [[ $backend == cuda ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits -lms 250 \
        >"$out/smi.csv" 2>/dev/null &
    smi_pid=$!
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} # three builds share the host's cores
for t in "${types[@]}"; do
    # shellcheck disable=SC2046 # adapter_sets prints separate --set words
    "$qft" train "configs/$t.cfg" "${common[@]}" $(adapter_sets "$t") \
        --set model.config.num_hidden_layers="${layers[$t]}" \
        --set output.dir="\"$out/$t\"" >"$out/$t.log" 2>&1 &
    pid[$t]=$! state[$t]=init t_launch[$t]=$(now)
    jobs_+=("$t")
done
torch_job=""
if [[ $py != none ]]; then
    tl=""
    for t in "${types[@]}"; do tl+="${tl:+,}${torch_name[$t]}=${layers[$t]}"; done
    "$py" bench/peft_model_bench.py --layers "$tl" --context $ctx --batch $batch \
        --steps "$steps" --hidden $hidden --inter $inter --heads $heads --kv $kv \
        --head-dim $hd --vocab $vocab --rope-theta 500000 --go-file "$out/torch.go" \
        ${QFT_MODEL_BENCH_TORCH_DRY:+--dry-run} \
        >"$out/torch.out" 2>"$out/torch.log" &
    torch_job=torch
    pid[torch]=$! state[torch]=init t_launch[torch]=$(now)
    jobs_+=(torch)
fi

torch_turns=0 torch_gpu_s=0 # PyTorch's rows granted the GPU, and their seconds on it
count() { local n; n=$(grep -c "$1" "$2" 2>/dev/null); echo "${n:-0}"; }
is_ready() { # the job has finished building (PyTorch: imported) and asks for the GPU
    if [[ $1 == torch ]]; then (( $(count '^READY' "$out/torch.out") > torch_turns ))
    else grep -q '^model: ' "$out/$1.log" 2>/dev/null; fi
}
grant() {
    gpu_holder=$1 state[$1]=gpu
    [[ -z ${t_gpu[$1]:-} ]] && t_gpu[$1]=$(now) # the first turn's start
    if [[ $1 == torch ]]; then
        t_turn=$(now)
        : >"$out/torch.go.$torch_turns"
        torch_turns=$(( torch_turns + 1 ))
    else
        kill -CONT "${pid[$1]}" 2>/dev/null
    fi
}
torch_turn_end() { # PyTorch's turn ends (its row done, or the process gone): its seconds
    torch_gpu_s=$(awk -v s="$torch_gpu_s" -v a="$t_turn" -v b="$(now)" 'BEGIN { printf "%.3f", s + b - a }')
}

while :; do
    live=0
    for j in "${jobs_[@]}"; do
        [[ ${state[$j]} == ended ]] && continue
        if ! kill -0 "${pid[$j]}" 2>/dev/null; then
            wait "${pid[$j]}"; rc_of[$j]=$?
            # ended before this loop saw its first step: it trained without the GPU turn
            [[ ${state[$j]} == init ]] && is_ready "$j" && unturned[$j]=1
            [[ $j == torch && ${state[$j]} == gpu ]] && torch_turn_end
            state[$j]=ended t_end[$j]=$(now)
            [[ $gpu_holder == "$j" ]] && gpu_holder=""
            continue
        fi
        live=1
        # a PyTorch row done: the GPU goes to whoever waits, its next row queues behind
        if [[ $j == torch && ${state[$j]} == gpu ]] &&
            (( $(count '^DONE' "$out/torch.out") == torch_turns )); then
            torch_turn_end
            state[$j]=init gpu_holder=""
        fi
        if [[ ${state[$j]} == init ]] && is_ready "$j"; then
            [[ -z ${t_ready[$j]:-} ]] && t_ready[$j]=$(now) # the first time
            if [[ -z $gpu_holder && ${#queue[@]} == 0 ]]; then grant "$j"
            else
                [[ $j != torch ]] && kill -STOP "${pid[$j]}"
                state[$j]=wait queue+=("$j")
            fi
        fi
    done
    if [[ -z $gpu_holder && ${#queue[@]} -gt 0 ]]; then
        grant "${queue[0]}"; queue=("${queue[@]:1}")
    fi
    (( live )) || break
    if awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then
        for j in "${jobs_[@]}"; do
            [[ ${state[$j]} == ended ]] && continue
            case ${state[$j]} in
            init) if [[ $j != torch ]]; then echo "building the model"
                  elif (( torch_turns )); then echo "between its rows"
                  else echo "importing"; fi ;;
            wait) echo "waiting for the GPU" ;;
            *) echo "training" ;;
            esac >"$out/$j.timedout"
            kill -CONT "${pid[$j]}" 2>/dev/null; kill -TERM "${pid[$j]}" 2>/dev/null
        done
        sleep 1
        for j in "${jobs_[@]}"; do
            [[ ${state[$j]} == ended ]] && continue
            kill -KILL "${pid[$j]}" 2>/dev/null; wait "${pid[$j]}" 2>/dev/null
            [[ $j == torch && ${state[$j]} == gpu ]] && torch_turn_end
            rc_of[$j]=124 state[$j]=ended t_end[$j]=$(now)
        done
        break
    fi
    sleep 0.05
done
[[ -n $smi_pid ]] && { kill "$smi_pid" 2>/dev/null; wait "$smi_pid" 2>/dev/null; smi_pid=""; }

# the largest used_memory nvidia-smi saw for a pid, MiB
smi_max() {
    [[ -s $out/smi.csv ]] || return 0
    awk -F', *' -v p="$1" '$1 == p && $2 + 0 > m { m = $2 + 0 } END { if (m) print m }' "$out/smi.csv"
}
# Other jobs that reached their first step inside [from, to], this job's timed steps: their
# work queued before the pause may have overlapped these steps.
overlap_note() {
    local me=$1 from=$2 to=$3 j who=""
    for j in "${jobs_[@]}"; do
        # (PyTorch is never paused: it waits for its turn before it touches the GPU)
        [[ $j == "$me" || $j == torch || -z ${t_ready[$j]:-} ]] && continue
        if awk -v r="${t_ready[$j]}" -v a="$from" -v b="$to" 'BEGIN { exit !(r > a && r < b) }'; then
            who+="${who:+, }$j"
        fi
    done
    [[ -n $who ]] && printf '; %s reached the first step during the timed steps (paused within 0.1 s; work it queued before may have overlapped them)' "$who"
}

gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "Model-level table: $shape (hidden $hidden, intermediate $inter, $heads heads, $kv KV heads, head_dim $hd, vocabulary $vocab, untied), batch $batch x context $ctx, recomputation on, 1 warm-up + $steps timed steps, train.backend $backend${gpu_name:+ on $gpu_name}; qft stores weights, gradients, optimizer state and activations in fp32 except the residual stream between blocks (train.residual_dtype ${QFT_MODEL_BENCH_RESIDUAL:-bf16}) and, for the adapters, the frozen head (bf16; the frozen embedding stays in host memory); PyTorch everything in bf16 but its adapters and their optimizer state."
echo
echo "| train_type | layers | context | tokens/s | peak GPU MiB | notes |"
echo "|---|---|---|---|---|---|"
for t in "${types[@]}"; do
    log=$out/$t.log m=$out/$t/metrics.jsonl
    notes="qft; fp32 storage, residual ${QFT_MODEL_BENCH_RESIDUAL:-bf16}"
    [[ $backend == cuda ]] && notes+=", matmul_precision ${QFT_MODEL_BENCH_MATMUL:-medium}"
    [[ $t != full && $backend != cpu ]] && notes+=", frozen head bf16, frozen embedding in host memory"
    params=$(sed -n 's/^model: .*; \([0-9.]*M\) parameters, \([0-9.]*M\) trainable.*/\1 parameters, \2 trainable/p' "$log" | head -1)
    [[ -n $params ]] && notes+="; $params"
    [[ -n ${t_ready[$t]:-} ]] && notes+="; host build + upload $(secs "${t_launch[$t]}" "${t_ready[$t]}") s"
    tps="-" peak="-"
    nrows=0
    [[ -f $m ]] && nrows=$(grep -c '"step"' "$m")
    if (( nrows >= 2 )); then
        read -r tps step_s real timed <<<"$(awk -v bt=$(( batch * ctx )) '
            { match($0, /"elapsed_s": [0-9.e+-]+/); el[NR] = substr($0, RSTART + 12, RLENGTH - 12) + 0
              match($0, /"tokens_per_s": [0-9.e+-]+/); tp[NR] = substr($0, RSTART + 16, RLENGTH - 16) + 0 }
            END { dt = el[NR] - el[1]; real = 0
                  for (k = 2; k <= NR; k++) real += tp[k] * (el[k] - el[k - 1])
                  printf "%.0f %.3f %.0f %.3f\n", (NR - 1) * bt / dt, dt / (NR - 1), real / (NR - 1), dt }' "$m")"
        notes+="; $(( nrows - 1 )) timed steps, $step_s s/step, ~$real tokens/step counted by qft"
        # the timed steps' window: from the grant (others paused before it held off) or
        # the steps' length back from the end, whichever is later
        notes+=$(overlap_note "$t" "$(awk -v e="${t_end[$t]}" -v d="$timed" -v g="${t_gpu[$t]:-0}" \
                 'BEGIN { w = e - d - 0.2; printf "%.3f", (w > g ? w : g) }')" "${t_end[$t]}")
    fi
    [[ -n ${unturned[$t]:-} ]] &&
        notes+="; ended before the scheduler saw its first step: trained without waiting for the GPU"
    p=$(sed -n 's/^memory: CUDA device peak \([0-9.]*\) MiB.*/\1/p' "$log" | tail -1)
    [[ -n $p ]] && peak=$p
    s=$(smi_max "${pid[$t]}")
    [[ -n $s ]] && notes+="; nvidia-smi max $s MiB (with the CUDA context)"
    if [[ $backend != cuda ]]; then
        rss=$(sed -n 's/.*peak mem \(.*\))$/\1)/p' "$log" | tail -1)
        peak="n/a ($backend)"; [[ -n $rss ]] && notes+="; host peak mem $rss"
        # cpu_guard counts the bytes of its buffers as the CUDA backend counts its own
        p=$(sed -n 's/^memory: cpu_guard backend peak \([0-9.]*\) MiB.*/\1/p' "$log" | tail -1)
        [[ -n $p ]] && peak="$p (cpu_guard's count)"
    fi
    if [[ -f $out/$t.timedout ]]; then
        tps="timed out"; notes+="; stopped at the ${budget}s budget while $(cat "$out/$t.timedout")"
    elif [[ ${rc_of[$t]:-1} != 0 ]]; then
        tps="failed"; notes+="; exit ${rc_of[$t]}: $(grep -v '^step ' "$log" | tail -1 | tr '|' '/' | cut -c1-240)"
    fi
    echo "| $t | ${layers[$t]} | $ctx | $tps | $peak | $notes |"
done
if [[ -n $torch_job ]]; then
    grep '^|' "$out/torch.out" 2>/dev/null
    grep -v '^|\|^READY\|^DONE' "$out/torch.out" 2>/dev/null
    if [[ -f $out/torch.timedout ]]; then
        echo "(PyTorch + PEFT: stopped at the ${budget}s budget while $(cat "$out/torch.timedout"); rows above are the ones it finished)"
    elif [[ ${rc_of[torch]:-0} != 0 ]] && ! grep -q '^|' "$out/torch.out"; then
        echo "(PyTorch + PEFT: exit ${rc_of[torch]}: $(tail -1 "$out/torch.log" | cut -c1-240))"
    fi
    [[ -n ${t_ready[torch]:-} ]] && echo "(PyTorch imports took $(secs "${t_launch[torch]}" "${t_ready[torch]}") s; its $torch_turns GPU turns, one a row, $(secs 0 "$torch_gpu_s") s in all)"
else
    echo "(PyTorch + PEFT rows not run: QFT_MODEL_BENCH_PYTHON=none)"
fi
line=""
for j in "${jobs_[@]}"; do
    line+="${line:+; }$j"
    [[ -n ${t_ready[$j]:-} ]] && line+=" ready $(secs "$t_start" "${t_ready[$j]}")"
    [[ -n ${t_gpu[$j]:-} ]] && line+=", GPU turn $(secs "$t_start" "${t_gpu[$j]}")"
    line+=", ended $(secs "$t_start" "${t_end[$j]}")"
done
echo "(timeline, seconds from the start: $line)"
echo "(total $(secs "$t_start" "$(now)") s; logs in $out)"
# a failed run fails the script; one stopped by the budget says so in its row only
status=0
for t in "${types[@]}"; do [[ ${rc_of[$t]:-1} == 0 || ${rc_of[$t]} == 124 ]] || status=1; done
exit $status
