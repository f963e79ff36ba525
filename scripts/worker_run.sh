#!/usr/bin/env bash
# Runs one command (train.py) on a TPU VM worker; `scripts/tpu_vm.py launch` starts it with
# setsid nohup on every worker, from the code directory:
#
#   bash scripts/worker_run.sh LOG_PREFIX COMMAND [ARG...]
#
# - appends the command's output to LOG_PREFIX.log (one header line per start);
# - keeps the command's process id in LOG_PREFIX.pid while it runs (`tpu_vm.py stop`);
# - when it ends, writes LOG_PREFIX.exit: "preempted" if train.py stopped at a preemption
#   checkpoint (rerunning the same command continues the run), otherwise its exit status.
#   `tpu_vm.py resume` relaunches after "preempted" or a missing file (the worker went down
#   with the run), never after a non-zero status, and stops after 0.
set -u
if [ "$#" -lt 2 ]; then
  echo "usage: $0 LOG_PREFIX COMMAND [ARG...]" >&2
  exit 2
fi
prefix="$1"
shift
log="$prefix.log"
mkdir -p "$(dirname "$prefix")"
rm -f "$prefix.exit"

# train.py starts jax.distributed on a multi-host slice when TPU_WORKER_HOSTNAMES lists several
# hosts. TPU VMs publish the list in the metadata server rather than in the environment;
# entries are "host" or "name:id:ip", of which the last field is the address.
if [ -z "${TPU_WORKER_HOSTNAMES:-}" ]; then
  endpoints="$(curl -sf --max-time 5 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints \
    || true)"
  hosts="$(printf '%s' "$endpoints" | tr ',' '\n' | awk -F: 'NF { print $NF }' | paste -sd, -)"
  if [ -n "$hosts" ]; then
    export TPU_WORKER_HOSTNAMES="$hosts"
  fi
fi

first_line=1
if [ -f "$log" ]; then
  first_line=$(( $(wc -l <"$log") + 1 ))
fi
echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): $*" >>"$log"
"$@" >>"$log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$prefix.pid"
wait "$pid"
status=$?
rm -f "$prefix.pid"
# train.py logs this line when it saved a checkpoint on SIGTERM or a preemption notice.
if [ "$status" -eq 0 ] && tail -n +"$first_line" "$log" | grep -q 'Preempted: saved step'; then
  echo preempted >"$prefix.exit"
else
  echo "$status" >"$prefix.exit"
fi
exit "$status"
