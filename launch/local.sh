#!/usr/bin/env bash
# One machine, several JAX processes (a pod in miniature, or one process per
# GPU): starts N copies of the train command with the coordinator flags and
# waits for all; if one fails, the others are stopped and its status returned.
#
#   bash launch/local.sh [--dry_run] [--num_processes N] [--port P] [--cpu_devices K] \
#       -- --config configs/classkd.py:size=tiny --workdir runs/local
#
#   --num_processes N   processes to start (default 1: a plain run)
#   --port P            the coordinator's port on 127.0.0.1 (default 12355)
#   --cpu_devices K     give each process K fake CPU devices (XLA_FLAGS), to try
#                       a multi-host mesh on a laptop; 0 = leave devices alone
#   --dry_run           print every command instead of running it
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0 num=1 port=12355 cpu_devices=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) dry_run=1; shift ;;
    --num_processes) num="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --cpu_devices) cpu_devices="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "launch/local.sh: unknown option $1 (train arguments go after --)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "launch/local.sh: give the train arguments after --" >&2; exit 2; }

run() {  # prints the command under --dry_run, else runs it
  if [ "$dry_run" = 1 ]; then printf '%q' "$1"; shift; printf ' %q' "$@"; echo; else "$@"; fi
}

if [ "$dry_run" = 0 ]; then
  # shellcheck disable=SC1091
  . launch/env.sh
fi
env_prefix=()
if [ "$cpu_devices" -gt 0 ]; then
  env_prefix=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$cpu_devices" JAX_PLATFORMS=cpu)
fi
if [ "$num" -eq 1 ]; then
  run "${env_prefix[@]}" python -m classkd_jax.train "$@"
  exit $?
fi
pids=()
for ((i = 0; i < num; i++)); do
  cmd=("${env_prefix[@]}" python -m classkd_jax.train "$@"
       --coordinator_address "127.0.0.1:$port" --num_processes "$num" --process_id "$i")
  if [ "$dry_run" = 1 ]; then run "${cmd[@]}"; else "${cmd[@]}" & pids+=($!); fi
done
[ "$dry_run" = 1 ] && exit 0
status=0
for pid in "${pids[@]}"; do
  # One failed: stop the others rather than leave them waiting for it.
  wait "$pid" || { status=$?; kill "${pids[@]}" 2>/dev/null || true; }
done
exit "$status"
