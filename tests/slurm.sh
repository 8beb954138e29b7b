#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (slurmctld and slurmd, no systemd, no cgroups)
# for the fine-tune stage's Slurm executor. Needs root and Debian's slurm-wlm and munge
# (`apt-get install -y slurm-wlm munge`).
#
#   bash tests/slurm.sh up        start munged (unless one answers), slurmctld and slurmd;
#                                 prints the SLURM_CONF to export for sbatch and squeue
#   bash tests/slurm.sh down      stop the daemons `up` started
#   bash tests/slurm.sh ci STORE  CI: start a cluster, run pipelines/ci.toml with
#                                 -S finetune.executor=slurm on a new store, cancel one array
#                                 task on purpose, check that the rerun submits only that run
#                                 and that the runs equal those of STORE (the same pipeline run
#                                 with the local executor); then submit cuda runs from this
#                                 node without a GPU and check that each task fails with the
#                                 device error as a failed run; then stop the daemons it started
#
# The node lists one GPU in Slurm's books (gres gpu, `File=/dev/null`: no device behind it),
# so that jobs asking for `--gpus-per-task` are accepted, start, and find no CUDA device,
# as on a node whose GPU is missing.
#
# State (configuration, pid files, logs) lives in $GRAFT_SLURM_DIR, by default
# target/slurm; `ci` uses a temporary directory of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "slurm.sh: $*" >&2; exit 1; }

# Writes the configuration of a one-node cluster into $1 (slurm-notes in the design notes).
configure() {
  local dir=$1 host cpus
  host=$(hostname -s)
  cpus=$(nproc)
  mkdir -p "$dir"/{state,spool,log}
  cat >"$dir/slurm.conf" <<EOF
ClusterName=graft
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
MinJobAge=3600
GresTypes=gpu
NodeName=$host CPUs=$cpus Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  # Read from beside slurm.conf. A GPU without a device: Slurm counts it and hands it out
  # (CUDA_VISIBLE_DEVICES=0), and nothing on this node can open it.
  echo "NodeName=$host Name=gpu File=/dev/null" >"$dir/gres.conf"
}

up() {
  local dir=$1
  [ "$(id -u)" = 0 ] || die "the one-node cluster runs its daemons as root (SlurmUser=root)"
  command -v slurmctld >/dev/null && command -v munged >/dev/null \
    || die "slurm-wlm and munge are not installed (apt-get install -y slurm-wlm munge)"
  for pid in "$dir/slurmctld.pid" "$dir/slurmd.pid"; do
    if [ -f "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null; then
      die "a cluster from $dir is running already ($(basename "$pid" .pid) $(cat "$pid")); stop it with: $0 down"
    fi
  done
  configure "$dir"
  export SLURM_CONF=$dir/slurm.conf
  # munged refuses to run as root, and nothing creates its socket directory without systemd.
  if ! munge -n </dev/null >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$dir/munged.pid"
    for _ in $(seq 100); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n </dev/null >/dev/null 2>&1 || die "munged did not answer"
  fi
  slurmctld
  slurmd
  local host
  host=$(hostname -s)
  for _ in $(seq 120); do
    [ "$(sinfo -h -n "$host" -o %T 2>/dev/null)" = idle ] && break
    sleep 0.25
  done
  [ "$(sinfo -h -n "$host" -o %T 2>/dev/null)" = idle ] \
    || { down "$dir"; die "node $host did not become idle (logs in $dir/log)"; }
  echo "slurm: one-node cluster up on $host ($(nproc) CPUs); for sbatch and squeue:"
  echo "  export SLURM_CONF=$dir/slurm.conf"
}

down() {
  local dir=$1 pids=() f
  for f in slurmd slurmctld munged; do
    if [ -f "$dir/$f.pid" ]; then
      pids+=("$(cat "$dir/$f.pid")")
      rm -f "$dir/$f.pid"
    fi
  done
  [ ${#pids[@]} -gt 0 ] || { echo "slurm: nothing started from $dir"; return 0; }
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    local alive=0 p
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  echo "slurm: stopped ${pids[*]}"
}

# The ids of the store's fine-tune run artifacts, sorted, one a line.
run_ids() {
  grep -l '"stage": "finetune-run"' "$1"/objects/*/manifest.json | xargs -n1 dirname | xargs -n1 basename | sort
}

ci() {
  local local_store=$1
  [ -d "$local_store/objects" ] || die "ci: $local_store is not a store (run pipelines/ci.toml into it first)"
  local graft=target/debug/graft
  # Globals: the EXIT trap runs after this function has returned.
  ci_dir=$(mktemp -d)
  ci_store=$(mktemp -d)
  trap 'down "$ci_dir"; rm -rf "$ci_dir" "$ci_store"' EXIT
  trap 'exit 130' INT TERM
  local dir=$ci_dir store=$ci_store
  up "$dir"
  export SLURM_CONF=$dir/slurm.conf

  # First run: cancel the array's last task while it waits, so that one run is missing.
  local out=$dir/first.out
  set +e
  "$graft" --store "$store" run ci -S finetune.executor=slurm -S finetune.slurm_max_parallel=2 \
    >"$out" 2>&1 &
  local run=$! job="" last=""
  for _ in $(seq 1200); do
    job=$(squeue -h -n graft-finetune -o %F 2>/dev/null | head -n1)
    if [ -n "$job" ]; then
      last=$(squeue -h -r -j "$job" -t pending -o %K 2>/dev/null | sort -n | tail -n1)
      [ -n "$last" ] && break
    fi
    kill -0 $run 2>/dev/null || break
    sleep 0.2
  done
  if [ -z "$job" ] || [ -z "$last" ]; then
    wait $run
    cat "$out"
    die "ci: no pending task of a graft-finetune job array appeared"
  fi
  scancel "${job}_${last}"
  echo "slurm ci: cancelled array task ${job}_${last}"
  wait $run
  local rc=$?
  set -e
  cat "$out"
  [ $rc != 0 ] || die "ci: the run with a cancelled task succeeded"
  grep -q "Slurm job ${job}_${last} ended without its run" "$out" \
    || die "ci: the failure does not name the cancelled task ${job}_${last}"

  # Second run: only the cancelled run is submitted.
  out=$dir/second.out
  "$graft" --store "$store" run ci -S finetune.executor=slurm 2>&1 | tee "$out"
  grep -q "submitted 1 run as Slurm job array" "$out" \
    || die "ci: the rerun did not submit exactly the one missing run"

  # The runs are the local executor's, artifact for artifact.
  if ! diff <(run_ids "$local_store") <(run_ids "$store") >"$dir/diff"; then
    cat "$dir/diff"
    die "ci: the Slurm executor's run artifacts differ from the local executor's"
  fi
  echo "slurm ci: $(run_ids "$store" | wc -l) run artifacts, identical to the local executor's"

  cuda_from_a_node_without_gpu "$store" "$dir"
}

# Issue 25: cuda runs submitted from this node, which has no GPU. The submitting stage
# checks only what it can know: it refuses cuda without a GPU per task at --check, submitting
# nothing, and with one it submits; each task then fails on the node with the device error
# (no CUDA in a flex build, no CUDA device on a tch one), shown as a failed run.
cuda_from_a_node_without_gpu() {
  local store=$1 dir=$2 graft=target/debug/graft out rc
  local cuda=(-S finetune.executor=slurm -S finetune.device=cuda -S 'finetune.seeds=[7]')
  out=$dir/cuda-check.out
  set +e
  "$graft" --store "$store" run ci "${cuda[@]}" >"$out" 2>&1
  rc=$?
  set -e
  cat "$out"
  [ $rc != 0 ] || die "ci: cuda without slurm_gpus_per_task was accepted"
  grep -q 'slurm_gpus_per_task = 0 with device = "cuda"' "$out" \
    || die "ci: the refusal of cuda without a GPU per task does not name slurm_gpus_per_task"
  ! grep -q "as Slurm job array" "$out" || die "ci: a refused cuda run was submitted"

  out=$dir/cuda.out
  set +e
  "$graft" --store "$store" run ci "${cuda[@]}" -S finetune.slurm_gpus_per_task=1 >"$out" 2>&1
  rc=$?
  set -e
  cat "$out"
  [ $rc != 0 ] || die "ci: cuda runs on a node without a GPU succeeded"
  local runs failed
  runs=$(sed -n 's/.*submitted \([0-9]*\) runs\{0,1\} as Slurm job array.*/\1/p' "$out")
  [ -n "$runs" ] || die "ci: the cuda runs were not submitted from this node without a GPU"
  # The results table: val % and test % say `failed` on every placement's row.
  grep -Eq '[[:space:]]failed[[:space:]]+failed$' "$out" || die "ci: no failed row for the cuda runs"
  failed=$(grep -o 'Slurm job [0-9_]* ended without its run: failed[^;]*; log [^:]*: [^;]*error: device = "cuda": [^;|]*CUDA[^;|]*' "$out" | wc -l)
  [ "$failed" = "$runs" ] \
    || die "ci: $failed of $runs cuda tasks failed with the device error in their log"
  echo "slurm ci: $runs cuda runs submitted from a node without a GPU, each failed with the device error"
}

cmd=${1:-}
case $cmd in
  up) up "${GRAFT_SLURM_DIR:-$PWD/target/slurm}" ;;
  down) down "${GRAFT_SLURM_DIR:-$PWD/target/slurm}" ;;
  ci) [ $# = 2 ] || die "usage: $0 ci LOCAL_STORE"; ci "$2" ;;
  *) die "usage: $0 up|down|ci LOCAL_STORE" ;;
esac
