#!/usr/bin/env bash
# Training bits before and after DyRep became one component (`dynamics::Dynamics`): the same
# short runs with two `dyrep` binaries — OLD built from a commit before the change, NEW after —
# compared by their final weights, events and metrics (timings aside). Origin, DBB, DyRep with
# mid-epoch and epoch-end grows and cuts, a probing scorer (snip), the affine form with top-2,
# and resumes with NEW from NEW's and from OLD's checkpoints (state.json written before the
# change). Each line should read SAME. Result: result.txt beside this file.
#
#   OLD=path/to/old/dyrep NEW=target/release/dyrep OUT=/tmp/bitcheck \
#       benches/repro/diagnostics/dynamics-component/bitcheck.sh
set -u
: "${OLD:?OLD=path to the dyrep binary before the change}"
: "${NEW:?NEW=path to the dyrep binary after the change}"
T=${OUT:-/tmp/dyrep-bitcheck}
HERE=$(cd "$(dirname "$0")" && pwd)
rm -rf "$T"; mkdir -p "$T"
COMMON="--epochs 3 --train-limit 480 --test-limit 200 --batch-size 32 -q"
cmpruns() { # a b
  local ok=1
  cmp -s $1/checkpoints/last/model.safetensors $2/checkpoints/last/model.safetensors || { echo "  weights differ"; ok=0; }
  cmp -s $1/checkpoints/last/optim.safetensors $2/checkpoints/last/optim.safetensors || echo "  (optim.safetensors bytes differ)"
  if [ -f $1/events.jsonl ] || [ -f $2/events.jsonl ]; then cmp -s $1/events.jsonl $2/events.jsonl || { echo "  events differ"; ok=0; }; fi
  python3 - $1/metrics.csv $2/metrics.csv <<'PY' || ok=0
import csv,sys
def rows(p):
    r=list(csv.DictReader(open(p)))
    return [{k:v for k,v in x.items() if k not in ('seconds','cpu_seconds')} for x in r]
a,b=rows(sys.argv[1]),rows(sys.argv[2])
if a!=b: print("  metrics differ"); sys.exit(1)
PY
  [ $ok = 1 ] && echo "  SAME ($(wc -l < $1/metrics.csv) metric lines, $( [ -f $1/events.jsonl ] && wc -l < $1/events.jsonl || echo 0) events)"
}
run() { # name flags...
  local name=$1; shift
  $OLD train $COMMON "$@" --out $T/old-$name > $T/old-$name.log 2>&1 || echo "old $name failed"
  $NEW train $COMMON "$@" --out $T/new-$name > $T/new-$name.log 2>&1 || echo "new $name failed"
  echo "$name:"; cmpruns $T/old-$name $T/new-$name
}
run origin --mode origin
run dbb --mode dbb
run dyrep-mid --mode dyrep --grow-interval "5 steps" --config $HERE/cut-min-std.toml
run dyrep-snip --mode dyrep --grow-interval "7 steps" --scorer snip --config $HERE/cut-min-std.toml
run dyrep-affine --mode dyrep --grow-interval 1 --preserve affine --grow-topk 2
# Resumed with NEW from a NEW checkpoint, and from an OLD one (state.json written before Dynamics).
$NEW train $COMMON --mode dyrep --grow-interval "5 steps" --config $HERE/cut-min-std.toml --stop-after 1 --out $T/new-resumed > /dev/null 2>&1
$NEW train --resume $T/new-resumed -q > /dev/null 2>&1 || echo "resume new failed"
echo "resume (new ckpt):"; cmpruns $T/old-dyrep-mid $T/new-resumed
$OLD train $COMMON --mode dyrep --grow-interval "5 steps" --config $HERE/cut-min-std.toml --stop-after 1 --out $T/old-resumed > /dev/null 2>&1
$NEW train --resume $T/old-resumed -q > $T/old-resumed.log 2>&1 || { echo "resume old failed"; cat $T/old-resumed.log; }
echo "resume (old ckpt):"; cmpruns $T/old-dyrep-mid $T/old-resumed
