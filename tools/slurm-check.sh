#!/usr/bin/env bash
# A real Slurm on this machine: a one-node cluster on localhost (as root, without systemd),
# deploy/slurm/infer-array.sbatch submitted as a 3-task array over six slides, the shards'
# summaries merged, and every slide checked done exactly once. The daemons it started are
# stopped when it ends. `.ci/run` runs it; so can anyone with Debian or Ubuntu and root.
#
#   tools/slurm-check.sh PATH/TO/infer
set -euo pipefail
cd "$(dirname "$0")/.."
infer="$(realpath "${1:?usage: tools/slurm-check.sh PATH/TO/infer}")"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

work="$(mktemp -d /tmp/slurm-check.XXXXXX)"
chmod 0755 "$work" # munged runs as `munge` and must reach its folder
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  pkill -f "slurmstepd.*$work" 2>/dev/null || true
  # slurmctld saves its state as it stops: wait for the daemons before removing their files.
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  done
  rm -rf "$work" || true
}
trap stop EXIT

# Munge: a generated key, the daemon as the `munge` user, its socket under $work.
install -d -o munge -g munge -m 0700 "$work/munge"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chown munge:munge "$work/munge/munge.key"
chmod 0400 "$work/munge/munge.key"
socket="$work/munge/munge.socket"
runuser -u munge -- munged --key-file="$work/munge/munge.key" --socket="$socket" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" \
  --seed-file="$work/munge/munged.seed" --force
pids+=("$(cat "$work/munge/munged.pid")")

# Slurm: one node, this machine's CPUs and memory, no cgroups, no accounting.
node="$(hostname -s)"
cpus="$(nproc)"
memory_mb="$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')"
mkdir -p "$work/state" "$work/spool" "$work/logs" "$work/out" "$work/slides"
export SLURM_CONF="$work/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=check
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/logs/slurmctld.log
SlurmdLogFile=$work/logs/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=check Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld -f "$SLURM_CONF"
sleep 1
pids+=("$(cat "$work/slurmctld.pid")")
slurmd -f "$SLURM_CONF"
sleep 1
pids+=("$(cat "$work/slurmd.pid")")
for _ in $(seq 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then break; fi
  sleep 1
done
sinfo
sinfo -h -o '%T' | grep -qx idle || { echo "the node never became idle"; cat "$work"/logs/*; exit 1; }

# Six slides, the array, the merge.
for fixture in slides/tiny_vips_jpeg.tif slides/tiny_tf_jpeg_rgb.tif slides/odd_vips_jpeg.tif \
  slides/odd_vips_lzw.tif slides/odd_vips_deflate.tif slides_more/tiny_aperio.svs; do
  cp "tests/fixtures/$fixture" "$work/slides/"
done
job="$(cd "$work/logs" && SLIDES="$work/slides" OUT="$work/out" INFER="$infer" \
  INFER_ARGS="--device cpu --batch 4" \
  sbatch --parsable --array=0-2 --cpus-per-task=1 --mem=1G "$OLDPWD/deploy/slurm/infer-array.sbatch")"
echo "submitted array job $job"
for _ in $(seq 600); do
  if [ -z "$(squeue -h -j "$job" 2>/dev/null)" ]; then break; fi
  sleep 1
done
if [ -n "$(squeue -h -j "$job")" ]; then echo "the array did not finish in 10 minutes"; exit 1; fi
cat "$work"/logs/infer-*.log
"$infer" merge "$work/out"

python3 - "$work/out" <<'PY'
import json, os, sys
out = sys.argv[1]
report = json.load(open(os.path.join(out, "cohort.json")))
stems = sorted(s["stem"] for s in report["slides"])
expected = sorted(["tiny_vips_jpeg", "tiny_tf_jpeg_rgb", "odd_vips_jpeg", "odd_vips_lzw",
                   "odd_vips_deflate", "tiny_aperio"])
assert stems == expected, stems
assert all(s["status"] == "done" for s in report["slides"]), report
# No cgroups here (task/none): each task sees the whole node and runs on its --cpus-per-task.
for stem in stems:
    hardware = json.load(open(os.path.join(out, stem + ".summary.json")))["hardware"]
    assert hardware.endswith(", 1 thread"), (stem, hardware)
print(f"Slurm: {len(stems)} slides over 3 array tasks, each done exactly once, on 1 thread each")
PY
