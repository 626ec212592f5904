#!/usr/bin/env bash
# A Cloud TPU VM slice: create it (or reuse it), put the code on every worker,
# install with the README's command, and run the same train command on all
# workers at once (jax.distributed starts by itself on a TPU slice). The
# workdir must be one directory every worker writes: with --bucket B the
# bucket is mounted with gcsfuse at ~/gcs/B on every worker, and the workdir
# is a path under it (the trainer writes plain files: a gs:// URL is refused).
#
#   bash launch/tpu_pod.sh [--dry_run] --tpu NAME --zone ZONE [--project P] \
#       [--accelerator v5litepod-16] [--version v2-alpha-tpuv5-lite] [--spot] \
#       [--repo URL [--ref REF] | --copy] [--bucket BUCKET] \
#       -- --config configs/classkd.py:pair=gpt2-xl/gpt2 \
#       --workdir ../gcs/BUCKET/runs/classkd-gpt2 --config.mesh.data=-1
#
# The train command runs in ~/classkd-jax on every worker, so the mounted
# bucket is ../gcs/BUCKET from there.
#
#   --repo URL   git clone (or pull) URL on every worker (default: --copy, which
#                copies this checkout with `gcloud ... scp`)
#   --spot       create a preemptible (spot) slice: a preempted run resumes from
#                its latest checkpoint when this script is run again
#   --dry_run    print every gcloud command instead of running it
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0 tpu="" zone="" project="" accelerator="v5litepod-16" version="v2-alpha-tpuv5-lite"
repo="" ref="main" spot=0 dir="classkd-jax" bucket=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) dry_run=1; shift ;;
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --copy) repo=""; shift ;;
    --spot) spot=1; shift ;;
    --bucket) bucket="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "launch/tpu_pod.sh: unknown option $1 (train arguments go after --)" >&2; exit 2 ;;
  esac
done
[ -n "$tpu" ] && [ -n "$zone" ] || { echo "launch/tpu_pod.sh: --tpu and --zone are required" >&2; exit 2; }
[ $# -gt 0 ] || { echo "launch/tpu_pod.sh: give the train arguments after --" >&2; exit 2; }

gc=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[ -n "$project" ] && where+=(--project "$project")
run() { if [ "$dry_run" = 1 ]; then printf '%q' "$1"; shift; printf ' %q' "$@"; echo; else "$@"; fi; }

# 1. Create the slice unless it exists.
if [ "$dry_run" = 1 ] || ! "${gc[@]}" describe "$tpu" "${where[@]}" >/dev/null 2>&1; then
  create=("${gc[@]}" create "$tpu" "${where[@]}" --accelerator-type "$accelerator" --version "$version")
  [ "$spot" = 1 ] && create+=(--spot)
  if [ "$dry_run" = 1 ]; then echo "# if the slice does not exist yet:"; fi
  run "${create[@]}"
fi

# 2. The code on every worker.
if [ -n "$repo" ]; then
  fetch="if [ -d $dir/.git ]; then git -C $dir fetch -q origin && git -C $dir checkout -q $ref && git -C $dir pull -q --ff-only || true; else git clone -q $repo $dir && git -C $dir checkout -q $ref; fi"
  run "${gc[@]}" ssh "$tpu" "${where[@]}" --worker=all --command "$fetch"
else
  run "${gc[@]}" scp --recurse "${where[@]}" --worker=all . "$tpu:~/$dir"
fi

# 3. Install as the README says (the TPU build of jaxlib: the [tpu] extra).
run "${gc[@]}" ssh "$tpu" "${where[@]}" --worker=all \
  --command "cd $dir && EXTRAS='[tpu]' . launch/env.sh"

# 4. The bucket the workdir lives in, on every worker.
if [ -n "$bucket" ]; then
  run "${gc[@]}" ssh "$tpu" "${where[@]}" --worker=all \
    --command "mkdir -p ~/gcs/$bucket && (mountpoint -q ~/gcs/$bucket || gcsfuse --implicit-dirs $bucket ~/gcs/$bucket)"
fi

# 5. The same train command on every worker, at once.
train="cd $dir && . .venv/bin/activate && python -m classkd_jax.train $(printf '%q ' "$@")"
run "${gc[@]}" ssh "$tpu" "${where[@]}" --worker=all --command "$train"
